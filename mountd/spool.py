"""Files being written: spooled to local disk, uploaded whole on close() and fsync().

Object stores replace whole objects, so a file open for writing is a temporary file in
the spool directory (memory stays bounded whatever the file's size); ``close()`` and
``fsync()`` upload it (the origin's multipart upload for large files) and return only once
the origin has it, so an acknowledged close is durable and a failed upload is the
writer's error. Right after the upload, the file's blocks are pushed to their owners
under the new object version (fill-on-write): the next job, on another machine, reads
them as cache hits. A write or truncation while an upload of the file is under way
(another handle's close, or the retry at release of a close that failed) waits until it
is done: the object is the file as it was when the upload began, and the change goes up
with the next close.

An existing object opened without ``O_TRUNC`` is first copied into the spool (through
the cache) when it is at most ``max_rewrite_bytes``; a larger one is refused, because
rewriting gigabytes to change a few bytes is never what the writer expects.

Each upload carries the file's mode, owner and mtime (see ``PosixAttrs``) and, with
``--upload-limit``, is charged to the mount's upload bucket as its bytes are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from clientlib.fill import fill_from_fd
from clientlib.origin import ObjectInfo, Origin
from clientlib.origin.base import PosixAttrs
from mountd.prefetch import BlockFetcher
from mountd.throttle import Throttle, UploadMeter

__all__ = ["Spool"]

log = logging.getLogger(__name__)


class Spool:
    """The local copy of one file being written, shared by every handle open on it."""

    def __init__(self, spool_dir: Path | None, url: str) -> None:
        self.url = url
        fd, name = tempfile.mkstemp(prefix="ringcache-spool-", dir=spool_dir)
        self.fd = fd
        self.path = Path(name)
        self.size = 0
        self.dirty = False
        self.refs = 0
        #: Set when the path was unlinked while open: nothing is uploaded any more.
        self.detached = False
        self.lock = asyncio.Lock()

    async def load(self, fetcher: BlockFetcher, info: ObjectInfo) -> None:
        """Copy the current object into the spool (an open without O_TRUNC)."""
        bs = fetcher.block_size
        loop = asyncio.get_running_loop()
        for index in range((info.size + bs - 1) // bs):
            data = await fetcher.get(info, index, bs)
            await loop.run_in_executor(None, os.pwrite, self.fd, data, index * bs)
        self.size = info.size

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``, once no upload of this spool is under way: the
        upload reads the file, and a change under it would be torn into the object or
        marked clean with the upload that missed it."""
        async with self.lock:
            # A pwrite lands in the page cache: cheaper than a thread hop for FUSE-sized
            # (<= 1 MiB) writes. ENOSPC and EIO surface as OSError with that errno.
            written = os.pwrite(self.fd, data, offset)
            self.size = max(self.size, offset + written)
            self.dirty = True
            return written

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    async def truncate(self, size: int) -> None:
        """Cut or extend the file to ``size``, once no upload is under way (see write)."""
        async with self.lock:
            os.ftruncate(self.fd, size)
            self.size = size
            self.dirty = True

    async def commit(
        self,
        origin: Origin,
        fetcher: BlockFetcher,
        posix: PosixAttrs | None = None,
        upload: Throttle | None = None,
    ) -> ObjectInfo | None:
        """Upload if there are changes, then fill the cache; the new version or None.

        ``posix`` is stored with the object; ``upload`` throttles the upload.

        Raises what the upload raised; the spool stays dirty so a later fsync, close or
        release tries again.
        """
        async with self.lock:
            if not self.dirty or self.detached:
                return None
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, os.fsync, self.fd)
            meter = UploadMeter(upload) if upload is not None else None
            info = await origin.write(self.url, self.path, posix=posix, progress=meter)
            if meter is not None:
                await meter.settle()
            self.dirty = False
            log.info(
                "uploaded %s: %d bytes in %.2fs", self.url, info.size, time.monotonic() - started
            )
            if info.size != self.size:
                log.warning(
                    "%s is %d bytes in the origin after writing %d: another writer? "
                    "not filling the cache",
                    self.url,
                    info.size,
                    self.size,
                )
                return info
            await self._fill(fetcher, info)
            return info

    async def _fill(self, fetcher: BlockFetcher, info: ObjectInfo) -> None:
        bs = fetcher.block_size
        await fill_from_fd(
            self.fd, info, bs, lambda index, data: fetcher.fill(info, index, bs, data)
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
