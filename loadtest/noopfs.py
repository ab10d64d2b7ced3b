"""A no-op pyfuse3 file system: one read-only file served from memory.

The ceiling of any Python FUSE mount on this machine: every read is answered at once
with a view of an in-memory buffer, with the same FUSE options and kernel read-ahead as
``mountd``, so what it reaches is pyfuse3's and the kernel's cost alone. Used by
``loadtest/bench_mount.py`` as a reference in the same run.

Usage: ``python -m loadtest.noopfs MOUNTPOINT --size-mib 1024`` (serves ``data.bin``;
unmount with ``fusermount3 -u`` or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import stat
import time

import pyfuse3
import pyfuse3.asyncio

from mountd.readahead import raise_read_ahead

FILE = b"data.bin"
FILE_INODE = pyfuse3.ROOT_INODE + 1


class NoopFS(pyfuse3.Operations):
    """``/data.bin``: ``size`` bytes of one in-memory buffer, read-only."""

    def __init__(self, size: int) -> None:
        super().__init__()
        block = os.urandom(1 << 20)
        self.data = memoryview(block * (size >> 20))
        self.now_ns = time.time_ns()

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = len(self.data)
            attr.st_blocks = (len(self.data) + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.now_ns
        attr.attr_timeout = attr.entry_timeout = 300
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE, self._attr(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> memoryview:
        return self.data[off : off + size]


async def serve(mountpoint: str, size: int) -> None:
    pyfuse3.asyncio.enable()
    fs = NoopFS(size)
    options = set(pyfuse3.default_options) | {"fsname=noopfs", "ro", "noatime"}
    pyfuse3.init(fs, mountpoint, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    read_ahead = asyncio.create_task(raise_read_ahead(mountpoint))
    try:
        await pyfuse3.main(max_tasks=256)
    finally:
        read_ahead.cancel()
        pyfuse3.close(unmount=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    asyncio.run(serve(args.mountpoint, args.size_mib << 20))


if __name__ == "__main__":
    main()
