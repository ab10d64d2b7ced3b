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

Stored POSIX attributes (mode, owner, mtime: :class:`PosixAttrs`) of an S3 object are
in its user metadata, which a listing does not return: a HEAD (lookup without a fresh
listing, getattr, open) learns them and they are trusted for ``attr_ttl`` like the rest.
Entries known only from a listing show the mount's defaults until then; the file system
checks access against the stored attributes at open (see ``RingcacheFS._check``).
``file://`` listings carry every entry's real mode and owner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field

import pyfuse3

from clientlib.errors import NotFound
from clientlib.origin import ObjectInfo, Origin
from clientlib.origin.base import PosixAttrs
from mountd.config import MountConfig

__all__ = ["Attr", "Inode", "InodeTable"]

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
NO_POSIX = PosixAttrs()
#: Directory listings kept before expired ones are dropped.
MAX_LISTINGS = 1024
#: Directories whose attributes set through this mount are remembered by path (for
#: servers that keep none on a marker); the oldest are forgotten beyond this many.
MAX_DIR_ATTRS = 100_000


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
    #: The stored mode/owner/mtime (fields None: not stored), or None: not known yet.
    posix: PosixAttrs | None = None
    #: When ``posix`` was learnt (monotonic); it is trusted for ``attr_ttl``.
    posix_at: float = 0.0
    #: A symbolic link's target, as ``(object version, target)``, once known.
    link: tuple[str, bytes] | None = None
    #: Times of changes made through this mount and not stored (wall clock; 0: none):
    #: a directory's entries changed (mtime and ctime), a name moved (ctime). The
    #: times shown are at least these.
    local_mtime: float = 0.0
    local_ctime: float = 0.0


@dataclass(slots=True)
class Listing:
    """One directory's entries as listed, with the time of the listing."""

    fetched: float
    entries: dict[str, Attr] = field(default_factory=dict)
    #: POSIX attributes the listing gave for free, by name ("" is the directory).
    posix: dict[str, PosixAttrs] = field(default_factory=dict)


def _hash_ino(path: str) -> int:
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return max(int.from_bytes(digest, "big") >> 1, ROOT_INODE + 1)


#: Longest name (in bytes) of a file or directory, as on Linux file systems.
NAME_MAX = 255


def utf8_name(name: str) -> bool:
    """Whether ``name`` (from the origin; ``file://`` names that are not UTF-8 arrive
    with surrogate escapes) is UTF-8, as every name on the mount must be: object keys,
    URLs and block ids are UTF-8, so another name could be listed but never read."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def kernel_name(name: bytes) -> str:
    """A name the kernel passed: ENAMETOOLONG over NAME_MAX bytes, and EILSEQ unless it
    is UTF-8 (see :func:`utf8_name`)."""
    if len(name) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EILSEQ) from None


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
        # The root's attributes live in this mount only (a bucket has no place for them).
        root.posix, root.posix_at = PosixAttrs(), float("inf")
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_path: dict[str, Inode] = {"": root}
        self._listings: dict[str, Listing] = {}
        self._listing_tasks: dict[str, asyncio.Task[Listing]] = {}
        self._pinned: set[str] = set()
        self._dir_attrs: dict[str, PosixAttrs] = {}

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

    def ensure(self, path: str, attr: Attr, posix: PosixAttrs | None = None) -> Inode:
        """The inode of ``path``, created or brought up to ``attr`` (unless pinned).

        ``posix``: its stored attributes if the answer included them; otherwise what was
        known stays known while the object is the same (same kind and version).
        """
        node = self._by_path.get(path)
        if node is not None:
            if not node.pinned:
                if node.attr.is_dir != attr.is_dir or (
                    not attr.is_dir and node.attr.version != attr.version
                ):
                    node.posix = None
                if node.attr.is_dir != attr.is_dir:
                    # A file became a directory (or back): a new object, keep the number.
                    node.attr = attr
                elif not attr.is_dir:
                    node.attr = attr
                node.checked = time.monotonic()
                if posix is not None:
                    (self.set_dir_posix if attr.is_dir else self.set_posix)(node, posix)
            return node
        ino = _hash_ino(path)
        while ino in self._by_ino:
            ino += 1
        node = Inode(ino, path, attr, time.monotonic())
        if posix is not None:
            self.set_posix(node, posix)
        self._by_ino[ino] = node
        self._by_path[path] = node
        return node

    @staticmethod
    def set_posix(node: Inode, posix: PosixAttrs) -> None:
        node.posix = posix
        node.posix_at = time.monotonic()

    def set_dir_posix(self, node: Inode, posix: PosixAttrs) -> None:
        """What the origin says of a directory's attributes. A marker without any (none,
        or a server that drops a marker's metadata: SeaweedFS) leaves those this mount
        set (:meth:`keep_dir_posix`) in place: they hold in this mount only."""
        if posix.mode is None:
            known = self._dir_attrs.get(node.path)
            if known is None and node.posix is not None and node.posix.mode is not None:
                known = node.posix
            if known is not None:
                self.set_posix(node, known)
                return
        self.set_posix(node, posix)

    def keep_dir_posix(self, node: Inode, posix: PosixAttrs) -> None:
        """The directory ``node``'s attributes were set through this mount (mkdir, chmod,
        chown, utime): they stand for it, by path, even after the kernel forgot the
        inode, wherever the origin has none."""
        self.set_posix(node, posix)
        self._dir_attrs.pop(node.path, None)
        self._dir_attrs[node.path] = posix
        if len(self._dir_attrs) > MAX_DIR_ATTRS:
            del self._dir_attrs[next(iter(self._dir_attrs))]

    def posix_fresh(self, node: Inode) -> bool:
        """Whether the stored attributes of ``node`` are known and recent enough."""
        if node.pinned or node.ino == ROOT_INODE:
            return node.posix is not None
        return node.posix is not None and time.monotonic() - node.posix_at < self._ttl

    async def fetch_posix(self, node: Inode) -> Inode:
        """Learn the stored attributes of ``node`` unless fresh: a HEAD for an S3 object
        (which refreshes its size and version too) or a directory's marker."""
        if self.posix_fresh(node) or node.pinned or node.ino == ROOT_INODE:
            return node
        url = self._config.url(node.path)
        if node.attr.is_dir:
            try:
                posix = await self._origin.dir_posix(self._config.dir_url(node.path))
            except NotFound:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            self.set_dir_posix(node, posix)
            return node
        try:
            info, posix = await self._origin.stat_posix(url)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None  # deleted in the origin
        if not node.pinned:
            node.attr = Attr.of(info)
            node.checked = time.monotonic()
            self.set_posix(node, posix)
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

    def moved_dir(self, node: Inode, new_path: str) -> None:
        """The directory ``node`` and its whole tree are now at ``new_path``.

        Known descendants take their new paths (the kernel moved its dentries and keeps
        their numbers), whatever was known under ``new_path`` (an empty directory it
        replaced) is detached, and the cached listings of both trees are dropped: the
        next readdir lists the moved tree afresh rather than trust names from before.
        """
        old_under, new_under = node.path + "/", new_path + "/"
        for path in [p for p in self._by_path if p.startswith(new_under)]:
            self._by_path.pop(path).path = ""  # detached, as in moved()
            self._pinned.discard(path)
        for path in [p for p in self._by_path if p.startswith(old_under)]:
            child = self._by_path.pop(path)
            child.path = new_under + path[len(old_under) :]
            self._by_path[child.path] = child
        self._pinned = {
            new_under + p[len(old_under) :] if p.startswith(old_under) else p for p in self._pinned
        }
        self._dir_attrs = {
            (new_path + p[len(node.path) :] if p == node.path or p.startswith(old_under) else p): a
            for p, a in self._dir_attrs.items()
            if p != new_path and not p.startswith(new_under)
        }
        self.drop_listings(node.path)
        self.drop_listings(new_path)
        self.moved(node, new_path)

    def removed(self, path: str) -> None:
        """``path`` was deleted: drop the name (open files keep their inode)."""
        self._dir_attrs.pop(path, None)
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
        dirs, files, posix = await self._origin.listdir_posix(url)
        listing = Listing(started, posix=posix)
        node = self._by_path.get(path)
        if "" in posix and node is not None and node.attr.is_dir and node.ino != ROOT_INODE:
            self.set_dir_posix(node, posix[""])
        unnamed: list[str] = []
        for info in files:
            name = info.key.rpartition("/")[2]
            if not utf8_name(name):
                unnamed.append(name)
            elif name and name not in (".", ".."):
                listing.entries[name] = Attr.of(info)
        for name in dirs:
            if not utf8_name(name):
                unnamed.append(name)
                continue
            if name in listing.entries:
                log.info("%s: both an object and a prefix; showing the directory", url + name)
            if name not in (".", ".."):
                listing.entries[name] = Attr(True, 0, self._by_ino[ROOT_INODE].attr.mtime)
        if unnamed:
            log.warning(
                "%s: %d name(s) not in UTF-8 left out of the listing (EILSEQ), e.g. %r",
                url,
                len(unnamed),
                os.fsencode(unnamed[0]),
            )
        # Files written here and not yet in the origin stay visible.
        for name, node in self._local_children(path):
            listing.entries[name] = node.attr
        log.debug(
            "listed %s: %d entries in %.3fs", url, len(listing.entries), time.monotonic() - started
        )
        self._prune_listings()
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

    def drop_listings(self, path: str) -> None:
        """Forget the listings of directory ``path`` and of every directory under it."""
        under = path + "/"
        for listed in [p for p in self._listings if p == path or p.startswith(under)]:
            del self._listings[listed]

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
                    info, posix = await self._origin.stat_posix(self._config.url(path))
                except NotFound:
                    pass
                else:
                    return self.ensure(path, Attr.of(info), posix)
            listing = await self.listing(parent.path)
        assert listing is not None
        attr = listing.entries.get(name)
        if attr is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        # The kernel keeps what a lookup answers for attr_ttl: give it the stored
        # attributes (a HEAD if the listing did not have them), not the defaults.
        return await self.fetch_posix(self.ensure(path, attr, listing.posix.get(name)))

    async def refresh(self, node: Inode, posix: bool = False) -> Inode:
        """Bring a file's size and version up to date if they are older than the TTL:
        one HEAD, which also gives its stored attributes. ``posix``: those are needed
        (getattr, a writer), so a file or directory whose attributes are not known or
        are older than the TTL costs a HEAD too."""
        if node.pinned or node.ino == ROOT_INODE or not node.path:
            return node
        if node.attr.is_dir:
            return await self.fetch_posix(node) if posix else node
        fresh = time.monotonic() - node.checked < self._ttl
        if fresh and (not posix or self.posix_fresh(node)):
            return node
        node.posix = None
        return await self.fetch_posix(node)

    @staticmethod
    def modified(node: Inode) -> None:
        """The file's bytes changed (a write, a truncate): its mtime and ctime are now,
        and its next upload stores the time of the upload, not a time set earlier."""
        node.attr.mtime = time.time()
        p = node.posix
        if p is not None and (p.mtime is not None or p.ctime is not None):
            node.posix = dataclasses.replace(p, mtime=None, ctime=None)

    @staticmethod
    def touch(directory: Inode) -> None:
        """An entry of ``directory`` was created, removed or renamed: its mtime and ctime
        are now (kept by this mount; see docs/mount.md)."""
        directory.local_mtime = directory.local_ctime = time.time()

    @staticmethod
    def changed(node: Inode) -> None:
        """``node`` itself changed without its attributes being stored (it was renamed):
        its ctime is now (kept by this mount)."""
        node.local_ctime = time.time()

    @staticmethod
    def kind(node: Inode) -> int:
        """The file type bits of ``node``: a directory, else the stored type (a symbolic
        link, FIFO, socket or device), else a regular file."""
        if node.attr.is_dir:
            return stat.S_IFDIR
        mode = node.posix.mode if node.posix is not None else None
        kind = stat.S_IFMT(mode or 0)
        return kind if kind and kind != stat.S_IFDIR else stat.S_IFREG

    def perms(self, node: Inode) -> tuple[int, int, int]:
        """``(permission bits, uid, gid)`` of ``node``: stored ones, else the mount's."""
        c = self._config
        p = node.posix or NO_POSIX
        default = (0o777 if node.attr.is_dir else 0o666) & ~c.umask
        return (
            p.perm if p.perm is not None else default,
            p.uid if p.uid is not None else c.uid,
            p.gid if p.gid is not None else c.gid,
        )

    def attributes(self, node: Inode) -> pyfuse3.EntryAttributes:
        """The kernel's view of ``node``: stored mode, owner and mtime, else the mount's
        defaults (``--uid``, ``--gid``, 0666/0777 minus ``--umask``)."""
        c = self._config
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = c.attr_ttl
        a.attr_timeout = c.attr_ttl
        p = node.posix or NO_POSIX
        a.st_nlink = 2 if node.attr.is_dir else 1
        perm, a.st_uid, a.st_gid = self.perms(node)
        a.st_mode = self.kind(node) | perm
        rdev = dict(p.extra).get("rdev", "")
        a.st_rdev = int(rdev) if rdev.isdigit() else 0
        a.st_size = node.attr.size
        a.st_blksize = 1024 * 1024
        a.st_blocks = (node.attr.size + 511) // 512
        mtime = node.attr.mtime if p.mtime is None else p.mtime
        ctime = mtime if p.ctime is None else p.ctime
        mtime, ctime = max(mtime, node.local_mtime), max(ctime, node.local_ctime)
        a.st_mtime_ns = int(mtime * 1e9)
        a.st_ctime_ns = int(ctime * 1e9)
        a.st_atime_ns = a.st_mtime_ns if p.atime is None else int(p.atime * 1e9)
        return a
