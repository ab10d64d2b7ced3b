"""The inode table: which path an inode is, and what the origin last said about it.

Inode numbers are a hash of the path under the mount, so a path has the same number in
every mount and after a remount (tools that remember ``st_ino`` see no churn); a rare
collision takes the next free number. Entries live while the kernel holds a reference
(its lookup count) or a file is open, and are rebuilt from the hash when it comes back.

Metadata is trusted for ``attr_ttl`` seconds. Directory contents come from one ``/``
delimiter listing per directory (every page of it), kept for the same time: ``ls -l`` of
10,000 entries is that listing and nothing else, because readdirplus hands the kernel
each entry's attributes from it. A lookup in a directory whose listing is not at hand
asks the origin for the one object (a HEAD) before it lists the directory, so opening a
known file in a large directory does not list it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import stat
import time
from dataclasses import dataclass, field

import pyfuse3

from clientlib.errors import NotFound
from clientlib.origin import ObjectInfo, Origin
from mountd.config import MountConfig

__all__ = ["Attr", "Inode", "InodeTable"]

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
#: Directory listings kept before expired ones are dropped.
MAX_LISTINGS = 1024


@dataclass(slots=True)
class Attr:
    """What the tree knows of one name: a directory, or an object version."""

    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    version: str = ""

    @classmethod
    def of(cls, info: ObjectInfo) -> Attr:
        return cls(False, info.size, info.mtime, info.version)


@dataclass(slots=True)
class Inode:
    """One path the kernel knows about."""

    ino: int
    path: str
    attr: Attr
    checked: float
    lookups: int = 0
    opens: int = 0
    #: Set while a writer holds changes the origin has not got yet: the origin's view of
    #: this path must not overwrite the local one.
    pinned: bool = False
    #: The object version the kernel's page cache holds for this inode (keep_cache).
    cached_version: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(slots=True)
class Listing:
    """One directory's entries as listed, with the time of the listing."""

    fetched: float
    entries: dict[str, Attr] = field(default_factory=dict)


def _hash_ino(path: str) -> int:
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return max(int.from_bytes(digest, "big") >> 1, ROOT_INODE + 1)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def child_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class InodeTable:
    """Inodes, directory listings and the origin calls that keep them fresh."""

    def __init__(self, config: MountConfig, origin: Origin) -> None:
        self._config = config
        self._origin = origin
        self._ttl = config.attr_ttl
        now = time.monotonic()
        root = Inode(ROOT_INODE, "", Attr(True, 0, time.time()), now, lookups=1)
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_path: dict[str, Inode] = {"": root}
        self._listings: dict[str, Listing] = {}
        self._listing_tasks: dict[str, asyncio.Task[Listing]] = {}
        self._pinned: set[str] = set()

    # -- the table ------------------------------------------------------------------
    def get(self, ino: int) -> Inode:
        node = self._by_ino.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)  # the kernel asked after forgetting
        return node

    def find_ino(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def find(self, path: str) -> Inode | None:
        return self._by_path.get(path)

    def ensure(self, path: str, attr: Attr) -> Inode:
        """The inode of ``path``, created or brought up to ``attr`` (unless pinned)."""
        node = self._by_path.get(path)
        if node is not None:
            if not node.pinned:
                if node.attr.is_dir != attr.is_dir:
                    # A file became a directory (or back): a new object, keep the number.
                    node.attr = attr
                elif not attr.is_dir:
                    node.attr = attr
                node.checked = time.monotonic()
            return node
        ino = _hash_ino(path)
        while ino in self._by_ino:
            ino += 1
        node = Inode(ino, path, attr, time.monotonic())
        self._by_ino[ino] = node
        self._by_path[path] = node
        return node

    def pin(self, node: Inode) -> None:
        """Local changes of ``node`` are not in the origin yet: keep them over listings."""
        node.pinned = True
        self._pinned.add(node.path)

    def unpin(self, node: Inode) -> None:
        node.pinned = False
        self._pinned.discard(node.path)

    def forget(self, ino: int, nlookup: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - nlookup)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Inode) -> None:
        if node.lookups == 0 and node.opens == 0 and not node.pinned:
            self._by_ino.pop(node.ino, None)
            if self._by_path.get(node.path) is node:
                del self._by_path[node.path]

    def release(self, node: Inode) -> None:
        node.opens -= 1
        self._maybe_drop(node)

    def moved(self, node: Inode, new_path: str) -> None:
        """``node`` is now at ``new_path`` (a rename): whatever was there is gone."""
        old_path = node.path
        displaced = self._by_path.pop(new_path, None)
        if displaced is not None and displaced is not node:
            displaced.path = ""  # detached: no longer reachable by name
        if self._by_path.get(old_path) is node:
            del self._by_path[old_path]
        if node.pinned:
            self._pinned.discard(old_path)
            self._pinned.add(new_path)
        node.path = new_path
        self._by_path[new_path] = node
        self.remove_entry(old_path)
        self.set_entry(new_path, node.attr)

    def removed(self, path: str) -> None:
        """``path`` was deleted: drop the name (open files keep their inode)."""
        node = self._by_path.pop(path, None)
        if node is not None:
            self.unpin(node)
            self._maybe_drop(node)
        self.remove_entry(path)

    # -- listings -------------------------------------------------------------------
    def set_entry(self, path: str, attr: Attr) -> None:
        """Record a local change in the parent's listing, if it is cached."""
        listing = self._listings.get(parent_of(path))
        if listing is not None:
            listing.entries[path.rpartition("/")[2]] = attr

    def remove_entry(self, path: str) -> None:
        listing = self._listings.get(parent_of(path))
        if listing is not None:
            listing.entries.pop(path.rpartition("/")[2], None)
        self._listings.pop(path, None)

    def _fresh(self, listing: Listing | None) -> bool:
        return listing is not None and time.monotonic() - listing.fetched < self._ttl

    async def listing(self, path: str) -> Listing:
        """The entries of directory ``path``, listed now unless a fresh listing is cached.

        Concurrent callers share one listing request.
        """
        listing = self._listings.get(path)
        if self._fresh(listing):
            assert listing is not None
            return listing
        task = self._listing_tasks.get(path)
        if task is None:
            task = asyncio.create_task(self._list(path))
            self._listing_tasks[path] = task
            task.add_done_callback(lambda _t: self._listing_tasks.pop(path, None))
        return await asyncio.shield(task)

    async def _list(self, path: str) -> Listing:
        url = self._config.dir_url(path)
        started = time.monotonic()
        dirs, files = await self._origin.listdir(url)
        listing = Listing(started)
        for info in files:
            name = info.key.rpartition("/")[2]
            if name and name not in (".", ".."):
                listing.entries[name] = Attr.of(info)
        for name in dirs:
            if name in listing.entries:
                log.info("%s: both an object and a prefix; showing the directory", url + name)
            if name not in (".", ".."):
                listing.entries[name] = Attr(True, 0, self._by_ino[ROOT_INODE].attr.mtime)
        # Files written here and not yet in the origin stay visible.
        for name, node in self._local_children(path):
            listing.entries[name] = node.attr
        log.debug(
            "listed %s: %d entries in %.3fs", url, len(listing.entries), time.monotonic() - started
        )
        self._listings[path] = listing
        return listing

    def _prune_listings(self) -> None:
        """Forget expired listings once there are many: a walk of a big tree must not
        keep every directory it passed in memory."""
        if len(self._listings) < MAX_LISTINGS:
            return
        for path in [p for p, lst in self._listings.items() if not self._fresh(lst)]:
            del self._listings[path]

    def _local_children(self, path: str) -> list[tuple[str, Inode]]:
        return [
            (p.rpartition("/")[2], self._by_path[p])
            for p in self._pinned
            if parent_of(p) == path and p in self._by_path
        ]

    def drop_listing(self, path: str) -> None:
        self._listings.pop(path, None)

    # -- lookups and freshness --------------------------------------------------------
    async def lookup(self, parent: Inode, name: str) -> Inode:
        """The inode of ``name`` in ``parent``; ENOENT if the origin has no such thing."""
        if not parent.attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        path = child_path(parent.path, name)
        node = self._by_path.get(path)
        if node is not None and node.pinned:
            return node
        listing = self._listings.get(parent.path)
        if not self._fresh(listing):
            listing = None
            if node is None or not node.attr.is_dir:
                try:
                    info = await self._origin.stat(self._config.url(path))
                except NotFound:
                    pass
                else:
                    return self.ensure(path, Attr.of(info))
            listing = await self.listing(parent.path)
        assert listing is not None
        attr = listing.entries.get(name)
        if attr is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.ensure(path, attr)

    async def refresh(self, node: Inode) -> Inode:
        """Bring a file's size and version up to date if they are older than the TTL."""
        if node.attr.is_dir or node.pinned or node.ino == ROOT_INODE or not node.path:
            return node
        if time.monotonic() - node.checked < self._ttl:
            return node
        try:
            info = await self._origin.stat(self._config.url(node.path))
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None  # deleted in the origin
        node.attr = Attr.of(info)
        node.checked = time.monotonic()
        return node

    def attributes(self, node: Inode) -> pyfuse3.EntryAttributes:
        """The kernel's view of ``node``: modes from the umask unless set by chmod."""
        c = self._config
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = c.attr_ttl
        a.attr_timeout = c.attr_ttl
        if node.attr.is_dir:
            kind, perm, a.st_nlink = stat.S_IFDIR, 0o777 & ~c.umask, 2
        else:
            kind, perm, a.st_nlink = stat.S_IFREG, 0o666 & ~c.umask, 1
        a.st_mode = kind | (node.mode if node.mode is not None else perm)
        a.st_uid = node.uid if node.uid is not None else c.uid
        a.st_gid = node.gid if node.gid is not None else c.gid
        a.st_rdev = 0
        a.st_size = node.attr.size
        a.st_blksize = 1024 * 1024
        a.st_blocks = (node.attr.size + 511) // 512
        ns = int(node.attr.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        return a
