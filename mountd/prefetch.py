"""Block reads of open files: the tiers in order, and read-ahead for sequential readers.

:class:`BlockFetcher` is where a block comes from: the local disk tier if there is one,
then :class:`CacheClient` (its memory tier, the block's owners, the origin), keeping
what it fetched on the local disk, and charging ``--download-limit`` for every block that
is not already on this machine. :class:`FileReader` serves the kernel's reads of one
open file version: a reader that keeps going forward gets up to the next ``depth``
blocks fetched in parallel ahead of it (a window that doubles with each block read),
while a random reader (a Parquet footer, a seek into an index) only ever costs the
bytes it reads: those are asked of the block's owner as a byte range, not as the whole
block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from clientlib.client import CacheClient
from clientlib.origin import ObjectInfo
from mountd.limits import Throttle
from mountd.localtier import LocalTier

__all__ = ["BlockFetcher", "FileReader"]

log = logging.getLogger(__name__)

#: Blocks read ahead when a stream starts; the window doubles with each block read, up
#: to the mount's ``--prefetch-blocks``.
FIRST_WINDOW = 2


class BlockFetcher:
    """Whole blocks of pinned object versions, through every tier."""

    def __init__(
        self,
        client: CacheClient,
        tier: LocalTier | None = None,
        download: Throttle | None = None,
    ) -> None:
        self.client = client
        self.tier = tier
        self.download = download
        self._pulls: dict[str, asyncio.Task[bytes]] = {}
        self._disk = ThreadPoolExecutor(4, thread_name_prefix="local-tier") if tier else None

    @property
    def block_size(self) -> int:
        return self.client.block_size

    async def get(self, info: ObjectInfo, index: int, *, keep: bool = True) -> bytes:
        """Block ``index``; ``keep=False`` for read-ahead, whose blocks the kernel's page
        cache keeps (see :meth:`CacheClient.read_block`), not the client's memory tier."""
        if self.tier is None:
            return await self._pull(info, index, keep)
        loop = asyncio.get_running_loop()
        block_id = self.client.block_ref(info, index).id
        data = await loop.run_in_executor(self._disk, self.tier.get, block_id)
        if data is not None:
            return data
        data = await self._pull(info, index, keep)
        loop.run_in_executor(self._disk, self.tier.put, block_id, data)
        return data

    async def get_part(self, info: ObjectInfo, index: int, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of a block, for a random read: sliced from the local
        disk tier if the block is there, else only those bytes are fetched (and charged
        to the download limit)."""
        ref = self.client.block_ref(info, index)
        if self.tier is not None:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(self._disk, self.tier.get, ref.id)
            if data is not None:
                return data[start:stop]
        if self.download is not None and not self.client.has_local(ref.id):
            await self.download.charge(stop - start)
        return await self.client.read_part(info, index, start, stop)

    async def _pull(self, info: ObjectInfo, index: int, keep: bool) -> bytes:
        """The block through the client; concurrent pulls of one block share one (and
        one charge to the download limit)."""
        if self.download is None:
            return await self.client.read_block(info, index, keep=keep)
        block_id = self.client.block_ref(info, index).id
        task = self._pulls.get(block_id)
        if task is None:
            task = asyncio.create_task(self._charged_read(info, index, keep))
            self._pulls[block_id] = task
            task.add_done_callback(lambda t: self._pulls.pop(block_id, None))
            task.add_done_callback(_consume)
        return await asyncio.shield(task)

    async def _charged_read(self, info: ObjectInfo, index: int, keep: bool) -> bytes:
        """Charge the download limit for a block that is not in the client's memory tier
        (which does not cross the network), then read it through the client."""
        assert self.download is not None
        ref = self.client.block_ref(info, index)
        if not self.client.has_local(ref.id):
            await self.download.charge(ref.length)
        return await self.client.read_block(info, index, keep=keep)

    async def fill(self, info: ObjectInfo, index: int, data: bytes) -> None:
        """Push a just-written block to its owners (and the local tier)."""
        await self.client.fill(info, index, data)
        if self.tier is not None:
            block_id = self.client.block_ref(info, index).id
            await asyncio.get_running_loop().run_in_executor(
                self._disk, self.tier.put, block_id, data
            )

    def close(self) -> None:
        if self._disk is not None:
            self._disk.shutdown(wait=True)


def _consume(task: asyncio.Task[bytes]) -> None:
    # A prefetch nobody waited for must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class FileReader:
    """Reads of one open file, pinned to the object version seen at open().

    Holds the block being read and at most ``depth`` prefetched ones, so its memory is
    bounded by ``(depth + 1) * block_size``. Prefetched blocks stay out of the client's
    memory tier: the kernel keeps the file's pages, and a block this reader has passed is
    freed, so a stream through a large file reuses the same few blocks' memory instead
    of faulting in (and zeroing) fresh pages for every block.
    """

    def __init__(self, fetcher: BlockFetcher, info: ObjectInfo, depth: int) -> None:
        self.info = info
        self._fetcher = fetcher
        self._bs = fetcher.block_size
        self._depth = depth
        self._nblocks = (info.size + self._bs - 1) // self._bs
        self._current: tuple[int, bytes] | None = None
        self._ahead: dict[int, asyncio.Task[bytes]] = {}
        self._last_block = -1
        self._streak = 0
        self._first_window = min(FIRST_WINDOW, depth)
        self._window = self._first_window

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``offset`` (fewer at the end of the file).

        A read within one block is a view of it, not a copy: pyfuse3 replies from any
        buffer, and at a few hundred MB/s the copies were a measurable share of the CPU.
        """
        end = min(offset + size, self.info.size)
        if offset >= end:
            return b""
        first, last = offset // self._bs, (end - 1) // self._bs
        # The kernel's read-ahead sends several requests at once, so "sequential" is
        # "in the block being read or the next one", not "exactly at the last end".
        if first in (self._last_block, self._last_block + 1):
            self._streak += 1
        else:
            self._streak = 0
            self._window = self._first_window
        self._last_block = last
        if self._streak >= 2 and self._depth:
            self._prefetch(last + 1, min(last + 1 + self._window, self._nblocks))
        if first == last:
            base = first * self._bs
            if self._streak < 2 and offset > 0 and not self._holds(first):
                # A jump (a Parquet footer, an index lookup): fetch just these bytes. A
                # read from the start, or a second one in a row, takes the whole block.
                return await self._fetcher.get_part(self.info, first, offset - base, end - base)
            data = await self._block(first)
            return memoryview(data)[offset - base : end - base]
        blocks = await asyncio.gather(*(self._block(i) for i in range(first, last + 1)))
        out = b"".join(blocks)
        base = first * self._bs
        return out[offset - base : end - base]

    def _prefetch(self, start: int, stop: int) -> None:
        for index in range(start, stop):
            if index not in self._ahead and (self._current is None or self._current[0] != index):
                task = asyncio.create_task(self._fetcher.get(self.info, index, keep=False))
                task.add_done_callback(_consume)
                self._ahead[index] = task

    def _holds(self, index: int) -> bool:
        """Whether block ``index`` is here or on its way (read-ahead)."""
        return index in self._ahead or (self._current is not None and self._current[0] == index)

    async def _block(self, index: int) -> bytes:
        current = self._current
        if current is not None and current[0] == index:
            return current[1]
        task = self._ahead.pop(index, None)
        data: bytes | None = None
        if task is not None:
            with contextlib.suppress(Exception):
                data = await task
        if data is None:
            data = await self._fetcher.get(self.info, index)
        if current is not None and index == current[0] + 1:
            # Read-ahead opens up as the stream goes on, like the kernel's: at the start
            # all ``depth`` blocks at once would share the links with the block the
            # reader waits for and make its first bytes ~5x later (measured: 10 ms for a
            # block alone from a warm node, 50 ms with eight others in flight).
            self._window = min(self._depth, self._window * 2)
        self._current = (index, data)
        for stale in [i for i in self._ahead if i < index]:
            self._ahead.pop(stale).cancel()
        return data

    def close(self) -> None:
        for task in self._ahead.values():
            task.cancel()
        self._ahead.clear()
        self._current = None
