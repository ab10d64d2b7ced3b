"""The files open for writing on a mount: one spool per file, shared by its writers.

A file opened for writing gets a :class:`mountd.spool.Spool` (a local copy uploaded on
``close``/``fsync``); every writer of that file shares it, and it lives until the last
one closes. The inode stays pinned meanwhile, so the kernel forgetting it does not lose
the writes. :class:`Writers` also knows the directories being renamed: an upload under
one would land at the old name after the copy, so no file there may be opened for
writing until the rename is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Iterator

import pyfuse3

from clientlib.origin import ObjectInfo
from mountd.config import MountConfig
from mountd.inodes import Inode, InodeTable
from mountd.prefetch import BlockFetcher
from mountd.spool import Spool

__all__ = ["Writers"]

log = logging.getLogger("mountd.fs")


class Writers:
    """Spools by inode number, and the directory URLs being renamed."""

    def __init__(self, config: MountConfig, inodes: InodeTable, fetcher: BlockFetcher) -> None:
        self._config = config
        self._inodes = inodes
        self._fetcher = fetcher
        self._spools: dict[int, Spool] = {}
        self._renaming: set[str] = set()
        #: Spools being made (and loaded), by inode number: set once done.
        self._making: dict[int, asyncio.Event] = {}

    def get(self, ino: int) -> Spool | None:
        return self._spools.get(ino)

    def __contains__(self, ino: object) -> bool:
        return ino in self._spools

    def items(self) -> list[tuple[int, Spool]]:
        return list(self._spools.items())

    async def open(self, node: Inode, info: ObjectInfo, truncate: bool) -> Spool:
        """The spool of ``node`` (at ``info``), created (and filled with the current
        object unless ``truncate``) if it has none yet; one more reference to it.

        Two opens of one file at once share one spool: the second waits until the first
        has made it. The reference is taken before any wait, so a release meanwhile does
        not close the spool under this open."""
        while (making := self._making.get(node.ino)) is not None:
            await making.wait()
        spool = self._spools.get(node.ino)
        if spool is None:
            self._making[node.ino] = done = asyncio.Event()
            try:
                spool = await self._make(node, info, truncate)
            finally:
                del self._making[node.ino]
                done.set()
        spool.refs += 1
        if truncate:
            try:
                await spool.truncate(0)  # after an upload under way (see Spool)
            except BaseException:
                self.close(node)
                raise
            node.attr.size = 0
            self._inodes.modified(node)
        return spool

    async def _make(self, node: Inode, info: ObjectInfo, truncate: bool) -> Spool:
        """A new spool for ``node``, registered and pinned; loaded unless ``truncate``."""
        url = info.url
        if any(url.startswith(prefix) for prefix in self._renaming):
            log.warning("refusing to write %s: its directory is being renamed", url)
            raise pyfuse3.FUSEError(errno.EBUSY)
        if not truncate and node.attr.size > self._config.max_rewrite_bytes:
            log.warning(
                "refusing to rewrite %s (%d bytes > --max-rewrite %d): open it with "
                "O_TRUNC to replace it",
                url,
                node.attr.size,
                self._config.max_rewrite_bytes,
            )
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        spool = Spool(self._config.spool_dir, url)
        try:
            if not truncate and node.attr.size:
                await spool.load(self._fetcher, info)
        except BaseException:
            spool.close()
            raise
        self._spools[node.ino] = spool
        self._inodes.pin(node)
        return spool

    def close(self, node: Inode) -> Spool | None:
        """Drop one reference; returns the spool if that was the last one."""
        spool = self._spools.get(node.ino)
        if spool is None:
            return None
        spool.refs -= 1
        if spool.refs > 0:
            return None
        del self._spools[node.ino]
        self._inodes.unpin(node)
        spool.close()
        return spool

    def local_only(self, node: Inode) -> bool:
        """Whether ``node``'s next upload will carry its attributes anyway (a file not
        yet in the origin, or one with unsaved writes)."""
        spool = self._spools.get(node.ino)
        return not node.attr.is_dir and (
            not node.attr.version or (spool is not None and spool.dirty)
        )

    @contextlib.contextmanager
    def renaming(self, prefix: str) -> Iterator[None]:
        """While a directory is renamed: EBUSY if a file under it is open for writing
        now, and no file under it may be opened for writing until it is done."""
        busy = [s.url for s in self._spools.values() if s.url.startswith(prefix) and not s.detached]
        if busy:
            log.warning(
                "refusing to rename %s: %d file(s) under it open for writing, e.g. %s",
                prefix,
                len(busy),
                busy[0],
            )
            raise pyfuse3.FUSEError(errno.EBUSY)
        self._renaming.add(prefix)
        try:
            yield
        finally:
            self._renaming.discard(prefix)
