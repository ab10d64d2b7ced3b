"""Fill-on-write: a just-written file's blocks pushed to the cache under its new version.

The mount's spools and the gateway's PUTs both upload a local file to the origin and
then push its blocks to their owners, so the next reader, on any machine, reads them as
hits. :func:`fill_from_fd` is that second step for both: the blocks are read from the
file the upload was made from (the bytes the origin now holds), a few at a time so
memory stays bounded, and a block that fails only means the next read of it misses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

from clientlib.origin import ObjectInfo

__all__ = ["FILL_PARALLEL", "fill_from_fd"]

log = logging.getLogger(__name__)

#: Blocks read and pushed at once (bounds memory to this many blocks).
FILL_PARALLEL = 4

#: Pushes block ``index`` (its bytes given) to wherever it is kept.
Push = Callable[[int, bytes], Awaitable[object]]


async def fill_from_fd(fd: int, info: ObjectInfo, block_size: int, push: Push) -> int:
    """Read each block of ``info`` (cut into blocks of ``block_size``) from ``fd`` and
    ``push`` it; returns how many blocks were pushed. Failures are logged, not raised:
    the object is already in the origin, and a block not filled is fetched on its
    first read."""
    gate = asyncio.Semaphore(FILL_PARALLEL)
    started = time.monotonic()

    async def one(index: int) -> None:
        async with gate:
            length = min(block_size, info.size - index * block_size)
            data = await asyncio.to_thread(os.pread, fd, length, index * block_size)
            await push(index, data)

    count = (info.size + block_size - 1) // block_size
    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        log.warning(
            "fill of %s: %d of %d blocks failed: %r", info.url, len(failed), count, failed[0]
        )
    log.debug(
        "filled %d blocks of %s in %.2fs", count - len(failed), info.url, time.monotonic() - started
    )
    return count - len(failed)
