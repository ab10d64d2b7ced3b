"""Block reads of open files: the tiers in order, and read-ahead for sequential readers.

:class:`BlockFetcher` is where a block comes from: the local disk tier if there is one,
then :class:`CacheClient` (its memory tier, the block's owners, the origin), keeping
what it fetched on the local disk (a stream's blocks only once an earlier stream through
the file has ended, :meth:`BlockFetcher.stores_stream`), and charging
``--download-limit`` for every block that is not already on this machine.
:class:`FileReader` serves the kernel's reads of one open file version: a reader that
keeps going forward gets up to the next ``depth`` blocks fetched in parallel ahead of
it (a window that doubles with each block read), while a random reader (a Parquet
footer, a seek into an index) is answered with the bytes it reads, asked of the block's
owner as a byte range, not as the whole block.
In a file that fits in the memory tier, a block that random reads come back to
(``PULL_AFTER`` range reads over the network) is then pulled whole in the background
into the memory tier (and the local disk tier), like JuiceFS's prefetch of a randomly
read block, so the next reads of it cross no network; once ``DENSE_AFTER`` blocks of a
file were pulled so, its other blocks are pulled at their first range read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from cachetools import LRUCache

from clientlib.client import CacheClient
from clientlib.origin import ObjectInfo
from clientlib.singleflight import SingleFlight
from mountd.localtier import LocalTier
from mountd.readahead import READ_AHEAD_KB
from mountd.throttle import Throttle

__all__ = ["BlockFetcher", "FileReader"]

log = logging.getLogger(__name__)

#: Blocks read ahead when a stream starts; the window doubles with each block read, up
#: to the mount's ``--prefetch-blocks``.
FIRST_WINDOW = 2
#: How far behind the furthest read a read of the same stream may still arrive: the
#: kernel has the reads of its read-ahead window and up to 12 more (FUSE's
#: ``max_background``) of up to 1 MiB each in flight, and mountd is handed them in any
#: order (14 MiB behind was seen with a 4 MiB window). Blocks that far back are kept,
#: and a read there is no jump.
LATE_BYTES = (READ_AHEAD_KB + 12 * 1024) * 1024
#: Reads whose offsets are remembered to match the next ones against (a stream's read
#: starts where an earlier one ended): more than the kernel has in flight for one file
#: (its read-ahead window of up to 1 MiB reads and ``max_background`` more).
RECENT_READS = 64
#: Range reads of one block after which it is pulled whole in the background: one read
#: (a Parquet footer) costs only its bytes; a block read again and again is worth having.
PULL_AFTER = 3
#: Blocks of one file pulled for :data:`PULL_AFTER` range reads after which the file's
#: other blocks are pulled at their first range read: its random reads are dense enough
#: to come back to every block, and waiting for three range reads of each first made
#: them most of a fresh mount's random-read job (three range reads a block of a 1 GiB
#: file, each 2-3 ms with pulls under way, for 3 of 5 s).
DENSE_AFTER = 2
#: Background pulls of whole blocks at once; blocks due while these run wait in a queue,
#: the most recently read first, and the next starts as soon as one ends (a pull that
#: waited for a block's next range read left the slots idle half the time).
BACKGROUND_PULLS = 2
#: Blocks waiting for a background pull, at most; the least recently read is forgotten
#: (its next range read queues it again).
PULLS_DUE = 64
#: Blocks whose range reads are counted (least recently read forgotten first).
COUNTED_BLOCKS = 4096
#: Fetched blocks waiting to be written to the local disk tier, at most; a block fetched
#: while that many wait is not stored. Fetched blocks are written with ``O_DIRECT``, at
#: the disk's pace: on a disk slower than the links, the blocks waiting (each holding
#: its buffer) would otherwise grow with the file.
MAX_STORING = 16
#: Threads of the local disk tier: its writes, and the reads of parts that are not in
#: the page cache.
TIER_THREADS = 4


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
        self._pulls: SingleFlight[str, bytes] = SingleFlight("block pull")
        self._disk = (
            ThreadPoolExecutor(TIER_THREADS, thread_name_prefix="local-tier") if tier else None
        )
        self._range_reads: LRUCache[str, int] = LRUCache(COUNTED_BLOCKS)
        # Files (by version) and how many of their blocks were pulled for PULL_AFTER reads.
        self._dense: LRUCache[tuple[str, str], int] = LRUCache(COUNTED_BLOCKS)
        self._behind: dict[str, asyncio.Task[bytes]] = {}  # background pulls of whole blocks
        self._due: OrderedDict[str, tuple[ObjectInfo, int, int, bool]] = OrderedDict()
        # Blocks handed to the disk tier's threads, not yet written: random reads of them
        # meanwhile are answered from here, not asked of the node again (or pulled again).
        self._landing: dict[str, bytes] = {}

    @property
    def block_size(self) -> int:
        return self.client.block_size

    async def get(
        self,
        info: ObjectInfo,
        index: int,
        bs: int,
        *,
        keep: bool = True,
        stream: bool = False,
        store: bool = True,
    ) -> bytes:
        """Block ``index`` in blocks of ``bs`` (the size the caller cut the file with);
        ``keep=False`` for read-ahead, whose blocks the kernel's page cache keeps (see
        :meth:`CacheClient.read_block`), not the client's memory tier. A block pulled for
        random reads is written to the disk tier past the page cache
        (:meth:`LocalTier.put`), and the disk then reads it back into the page cache,
        where the random reads that pulled it come back for its other parts. A block
        still being written to the disk tier is answered from the bytes being written.

        ``stream`` for a block a sequential reader reads whole (which the kernel keeps
        in the mount's own page cache): stored with no read-back, and only if ``store``
        (:meth:`stores_stream`)."""
        if self.tier is None:
            return await self._pull(info, index, bs, keep)
        loop = asyncio.get_running_loop()
        block_id = self.client.block_id(info, index, bs)
        if (landing := self._landing.get(block_id)) is not None:
            # Fetched a moment ago and not yet on the disk: neither there nor (fetched
            # with keep=False) in the memory tier, and fetching it again would cost
            # the links and the nodes' disks a second time.
            if keep:
                self.client.remember(block_id, landing)
            return landing
        if self.client.has_local(block_id):
            data = await self._pull(info, index, bs, keep)
            # In memory (the first block a stream read, say), but on no disk yet.
            if stream and store and not self.tier.has(block_id):
                self._store(block_id, data, read_back=False)
            return data
        if self.tier.has(block_id):
            data = await loop.run_in_executor(self._disk, self.tier.get, block_id)
            if data is not None:
                if keep:
                    self.client.remember(block_id, data)
                return data
        data = await self._pull(info, index, bs, keep)
        if store:
            self._store(block_id, data, read_back=not stream)
        return data

    def stores_stream(self, info: ObjectInfo) -> bool:
        """Whether a stream through ``info`` starting now stores the blocks it fetches in
        the disk tier: only if the file fits there whole, and an earlier stream through
        that version of it has ended (:meth:`streamed`; remembered across mounts of the
        tier, :meth:`LocalTier.streamed`). Streams through a file at once (the jobs of
        a ``numjobs`` run, each reading its share) are all first ones.

        A file larger than the tier, read through again and again (every job of a
        backtest), would evict itself ahead of the next pass in an LRU tier, never be
        read from there, and push out the blocks random readers come back to (as the
        nodes' memory tier, :meth:`cachenode.memtier.MemoryTier.admits`). And storing
        the first stream through a file cost the mount two fifths of its CPU per MB
        read (the writes on this project's VM, the hashing) and up to two fifths of its
        sequential throughput, for a copy that only a later read needs; most files are
        read once, and the kernel's page cache keeps them for a while anyway
        (``loadtest/results/mount.md``, twelfth session)."""
        tier = self._tier_holding(info)
        return tier is not None and tier.streamed(info.url, info.version)

    def streamed(self, info: ObjectInfo) -> None:
        """A stream through ``info`` has ended: the next ones store their blocks
        (:meth:`stores_stream`); the tier's record is saved on a thread."""
        tier = self._tier_holding(info)
        if tier is not None and tier.record_stream(info.url, info.version):
            asyncio.get_running_loop().run_in_executor(None, tier.save_streams)

    def _tier_holding(self, info: ObjectInfo) -> LocalTier | None:
        """The disk tier if ``info``'s file fits in it whole: what is worth keeping of a
        file read again (see :meth:`stores_stream`)."""
        tier = self.tier
        return tier if tier is not None and tier.fits(info.size) else None

    def _store(self, block_id: str, data: bytes, *, read_back: bool) -> None:
        """Write a fetched block to the disk tier with ``O_DIRECT`` (and ``read_back``,
        :meth:`LocalTier.put`) on its threads, unless :data:`MAX_STORING` blocks already
        wait for them (the reader is never held up)."""
        assert self.tier is not None
        if block_id in self._landing:  # stored by the fetch that is writing it now
            return
        if len(self._landing) >= MAX_STORING:
            log.debug(
                "block %s not stored in the local tier: %d blocks wait", block_id, MAX_STORING
            )
            return
        self._landing[block_id] = data
        loop = asyncio.get_running_loop()
        stored = loop.run_in_executor(
            self._disk, partial(self.tier.put, block_id, data, direct=True, read_back=read_back)
        )
        stored.add_done_callback(partial(self._stored, block_id))

    def _stored(self, block_id: str, done: asyncio.Future[None]) -> None:
        del self._landing[block_id]
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.warning("local tier: storing a block failed: %s", exc)

    async def get_part(self, info: ObjectInfo, index: int, bs: int, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of a block, for a random read: from the memory tier,
        else the local disk tier if the block is there (only the parts that hold them),
        else only those bytes are fetched (and charged to the download limit)."""
        block_id = self.client.block_id(info, index, bs)
        if self.client.has_local(block_id):
            return await self.client.read_part(info, index, start, stop, bs)
        if (landing := self._landing.get(block_id)) is not None:
            return landing[start:stop]
        if self.tier is not None and self.tier.has(block_id):
            # In the page cache: read on the loop, which costs less than the hop to a
            # thread and back; otherwise the disk read waits on a thread. A block the
            # tier does not hold skips both: while a fresh mount pulls a file's blocks,
            # those threads are writing them, and a range read that queued behind them
            # only to learn the block is not there did up to a third fewer reads in
            # a fresh mount's first seconds (loadtest/results/mount.md, eleventh session).
            part = self.tier.get_part_cached(block_id, start, stop)
            if part is None:
                loop = asyncio.get_running_loop()
                part = await loop.run_in_executor(
                    self._disk, self.tier.get_part, block_id, start, stop
                )
            if part is not None:
                return part
        self._count_range_read(info, index, bs, block_id)
        if self.download is not None:
            await self.download.charge(stop - start)
        return await self.client.read_part(info, index, start, stop, bs)

    def _count_range_read(self, info: ObjectInfo, index: int, bs: int, block_id: str) -> None:
        """Count a range read of a block that is not on this machine; at the
        ``PULL_AFTER``-th, pull the block whole in the background (unless
        ``BACKGROUND_PULLS`` are running), into a tier the whole file fits in: the memory
        tier (and the disk tier, if any), else the disk tier alone. Blocks of a file
        larger than the tier they would go to are evicted before random reads come back
        to them, and pulling them again and again cost more than the range reads they
        save (fio over a 1 GiB file, 256 MiB memory tier). Blocks on the disk tier are
        not pulled into memory either: that would save a thread hop a read, for a
        whole-block read and check each time."""
        if info.size <= self.client.memory_bytes:
            keep = True
        elif self._tier_holding(info) is not None:
            keep = False
        else:
            return
        reads = self._range_reads.get(block_id, 0) + 1
        self._range_reads[block_id] = reads
        file = (info.url, info.version)
        dense = self._dense.get(file, 0)
        if (reads < PULL_AFTER and dense < DENSE_AFTER) or block_id in self._behind:
            return
        del self._range_reads[block_id]
        if reads >= PULL_AFTER:
            self._dense[file] = dense + 1
        self._due[block_id] = (info, index, bs, keep)
        self._due.move_to_end(block_id)
        if len(self._due) > PULLS_DUE:
            self._due.popitem(last=False)
        self._pull_next()

    def _pull_next(self) -> None:
        """Start the pulls of the most recently read blocks due, while slots are free."""
        while self._due and len(self._behind) < BACKGROUND_PULLS:
            block_id, (info, index, bs, keep) = self._due.popitem()
            if self.client.has_local(block_id) or block_id in self._landing:
                continue
            if self.tier is not None and self.tier.has(block_id):
                continue
            task = asyncio.create_task(self.get(info, index, bs, keep=keep))
            self._behind[block_id] = task
            task.add_done_callback(partial(self._pulled, block_id))

    def _pulled(self, block_id: str, task: asyncio.Task[bytes]) -> None:
        del self._behind[block_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.info("background pull of block %s failed: %s", block_id, exc)
        self._pull_next()

    async def _pull(self, info: ObjectInfo, index: int, bs: int, keep: bool) -> bytes:
        """The block through the client; concurrent pulls of one block share one (and
        one charge to the download limit)."""
        if self.download is None:
            return await self.client.read_block(info, index, keep=keep, block_size=bs)
        block_id = self.client.block_id(info, index, bs)
        return await self._pulls.run(block_id, lambda: self._charged_read(info, index, bs, keep))

    async def _charged_read(self, info: ObjectInfo, index: int, bs: int, keep: bool) -> bytes:
        """Charge the download limit for a block that is not in the client's memory tier
        (which does not cross the network), then read it through the client."""
        assert self.download is not None
        ref = self.client.block_ref(info, index, bs)
        if not self.client.has_local(self.client.block_id(info, index, bs)):
            await self.download.charge(ref.length)
        return await self.client.read_block(info, index, keep=keep, block_size=bs)

    async def fill(self, info: ObjectInfo, index: int, bs: int, data: bytes) -> None:
        """Push a just-written block (of a file cut into blocks of ``bs``) to its owners
        (and the local tier, past the page cache as a fetched block: the kernel keeps
        the writer's own copy in the mount's page cache, and a buffered write would copy
        the block into fresh page cache pages, see :mod:`mountd.localtier`)."""
        await self.client.fill(info, index, data, bs)
        if self.tier is not None:
            block_id = self.client.block_id(info, index, bs)
            await asyncio.get_running_loop().run_in_executor(
                self._disk, partial(self.tier.put, block_id, data, direct=True)
            )

    def close(self) -> None:
        self._due.clear()
        for task in self._behind.values():
            task.cancel()
        if self._disk is not None:
            self._disk.shutdown(wait=True)
        if self.tier is not None:
            self.tier.save_streams()  # those ended since the last save on a thread
            self.tier.close()


def _consume(task: asyncio.Task[bytes]) -> None:
    # A prefetch nobody waited for must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class FileReader:
    """Reads of one open file, pinned to the object version seen at open().

    A block a read asked for is held while a read waits for it and, once here, while it
    is the block being read or one of the ``late`` before it (those within
    ``LATE_BYTES``); read-ahead blocks are held from there up to ``depth`` after the
    current block. So memory is bounded by about ``(depth + late + 1) * block_size``
    plus blocks that reads are still waiting for. Blocks stay out of the client's
    memory tier (``keep=False`` for read-ahead): the kernel keeps the file's pages, and
    a block this reader has passed is freed, so a stream through a large file reuses
    the same few blocks' memory instead of faulting in (and zeroing) fresh pages for
    every block.

    The kernel's reads of one file run concurrently and arrive, and finish, out of
    order: the tail of block ``k`` can come after reads of ``k + 3``, and a second read
    of a block can arrive while the first waits for it. So a block is held from the
    moment a read asks for it, not from when it arrives; the blocks within
    ``LATE_BYTES`` behind the current one are kept; and a read there leaves the stream
    where it is. Taken for a jump, such a read fetched its bytes a second time,
    restarted the read-ahead window and cancelled read-ahead blocks on their way.
    """

    def __init__(self, fetcher: BlockFetcher, info: ObjectInfo, depth: int) -> None:
        self.info = info
        self._fetcher = fetcher
        self._bs = fetcher.block_size
        self._depth = depth
        self._nblocks = (info.size + self._bs - 1) // self._bs
        self._stores: bool | None = None  # see _storing
        self._asked: dict[int, asyncio.Task[bytes]] = {}  # blocks reads asked for
        self._ahead: dict[int, asyncio.Task[bytes]] = {}  # read-ahead nobody asked for yet
        self._position = -1  # the block being read: the furthest a stream has reached
        self._streak = 0
        self._first_window = min(FIRST_WINDOW, depth)
        self._window = self._first_window
        self._late = max(1, -(-LATE_BYTES // self._bs))
        # Where the latest reads started and ended; the start of the file counts as an
        # end, so a reader from there is a stream from its first read.
        self._starts: deque[int] = deque(maxlen=RECENT_READS)
        self._ends: deque[int] = deque([0], maxlen=RECENT_READS)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``offset`` (fewer at the end of the file).

        A read within one block is a view of it, not a copy: pyfuse3 replies from any
        buffer, and at a few hundred MB/s the copies were a measurable share of the CPU.
        """
        end = min(offset + size, self.info.size)
        if offset >= end:
            return b""
        first, last = offset // self._bs, (end - 1) // self._bs
        self._follow(offset, end, first, last)
        if self._streak >= 2 and self._depth:
            self._prefetch(last + 1, min(last + 1 + self._window, self._nblocks))
        indexes = range(first, last + 1)
        if self._streak < 2 and first > 0 and not any(map(self._holds, indexes)):
            # A jump (a Parquet footer, an index lookup): fetch just these bytes, from
            # each block they fall in. A read in the first block, or a second one in a
            # row, takes whole blocks: the kernel's first reads of a file are sent at
            # once and can arrive in any order, so the one at offset 0 may come second,
            # and answering an earlier one with a part fetched those bytes twice.
            if first == last:
                # Awaited here, not through gather(), whose task for it costs a turn of
                # the event loop per read.
                base = first * self._bs
                return await self._fetcher.get_part(
                    self.info, first, self._bs, offset - base, end - base
                )
            parts = await asyncio.gather(
                *(
                    self._fetcher.get_part(
                        self.info,
                        i,
                        self._bs,
                        max(offset, i * self._bs) - i * self._bs,
                        min(end, (i + 1) * self._bs) - i * self._bs,
                    )
                    for i in indexes
                )
            )
            return b"".join(parts)
        if first == last:
            base = first * self._bs
            data = await self._block(first)
            return memoryview(data)[offset - base : end - base]
        blocks = await asyncio.gather(*(self._block(i) for i in range(first, last + 1)))
        out = b"".join(blocks)
        base = first * self._bs
        return out[offset - base : end - base]

    def _follow(self, offset: int, end: int, first: int, last: int) -> None:
        """Track the stream: a read in the block being read, the one before it or the
        next one moves it on, and counts towards making it one if it starts where an
        earlier read ended (or ends where one started: the kernel's reads arrive in any
        order); a late one (up to ``late`` blocks behind) leaves it as it is; anything
        else is a jump.

        Blocks alone were not enough: a random reader coming back to a block (and, in
        between, to one a few blocks before it, a late read) was taken for a stream,
        its reads for whole blocks and read-ahead of the blocks after them."""
        adjacent = offset in self._ends or end in self._starts
        self._starts.append(offset)
        self._ends.append(end)
        if self._position - 1 <= first <= self._position + 1:
            if adjacent:
                self._streak += 1
            if last > self._position >= 0:
                # Read-ahead opens up as the stream goes on, like the kernel's: at the
                # start all ``depth`` blocks at once would share the links with the block
                # the reader waits for and delay its first bytes several times over.
                self._window = min(self._depth, self._window * 2)
            self._position = max(self._position, last)
        elif self._position - self._late <= first < self._position:
            # A read the kernel sent before the ones that overtook it: answering it must
            # not move the stream back, shrink its window or cancel its read-ahead.
            return
        else:
            self._streak = 0
            self._window = self._first_window
            self._position = last
        for index in [i for i in self._ahead if not self._near(i, self._depth)]:
            self._ahead.pop(index).cancel()  # passed, or left behind by a jump

    def _near(self, index: int, ahead: int) -> bool:
        """Whether block ``index`` is within the ``late`` blocks before the current one
        and ``ahead`` blocks after it."""
        return self._position - self._late <= index <= self._position + ahead

    def _prefetch(self, start: int, stop: int) -> None:
        for index in range(start, stop):
            if index not in self._ahead and index not in self._asked:
                task = asyncio.create_task(
                    self._fetcher.get(
                        self.info, index, self._bs, keep=False, stream=True, store=self._storing()
                    )
                )
                task.add_done_callback(_consume)
                self._ahead[index] = task

    def _storing(self) -> bool:
        """Whether this reader's stream stores its blocks in the disk tier, asked of the
        fetcher at its first whole block (a reader that only reads parts is no stream)."""
        if self._stores is None:
            self._stores = self._fetcher.stores_stream(self.info)
        return self._stores

    def _holds(self, index: int) -> bool:
        """Whether block ``index`` is here or on its way."""
        return index in self._ahead or index in self._asked

    async def _block(self, index: int) -> bytes:
        task = self._asked.get(index)
        if task is None:
            task = self._ahead.pop(index, None)
            if task is None:
                task = asyncio.create_task(
                    self._fetcher.get(
                        self.info, index, self._bs, stream=True, store=self._storing()
                    )
                )
                task.add_done_callback(_consume)
            self._asked[index] = task
        try:
            data = await asyncio.shield(task)
        except Exception:
            # A read-ahead that failed (its owner died, say) is asked for once more,
            # through every tier, before the read fails.
            if self._asked.get(index) is task:
                del self._asked[index]
            data = await self._fetcher.get(
                self.info, index, self._bs, stream=True, store=self._storing()
            )
        for done in [i for i, t in self._asked.items() if t.done() and not self._near(i, 0)]:
            del self._asked[done]
        return data

    def close(self) -> None:
        if self._stores is not None:
            self._fetcher.streamed(self.info)
        for task in self._ahead.values():
            task.cancel()
        self._ahead.clear()
        for task in self._asked.values():
            task.cancel()
        self._asked.clear()
