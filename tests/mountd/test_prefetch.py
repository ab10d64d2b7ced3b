"""FileReader's read-ahead as a unit: which blocks it asks for, when, and to be kept or not.

The mount tests (test_reads.py) read real files through real clusters; this one counts
the requests a sequential reader causes, which those cannot see from outside.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from clientlib.origin import ObjectInfo
from mountd import prefetch
from mountd.localtier import LocalTier
from mountd.prefetch import BlockFetcher, FileReader

BS = 8  # bytes a block: small, so the test can read many blocks


class RecordingFetcher:
    """Stands in for BlockFetcher: answers block ``i`` with ``BS`` bytes of value ``i``."""

    block_size = BS

    def __init__(self) -> None:
        self.asked: list[tuple[int, bool]] = []  # whole blocks: (index, keep)
        self.parts: list[tuple[int, int, int]] = []  # byte ranges: (index, start, stop)
        self.sizes: set[int] = set()  # block sizes asked with
        self.as_stream: list[bool] = []  # whole blocks: asked as a stream's (stream=True)
        self.streams = 0  # stores_stream calls: one a stream
        self.ended = 0  # streamed calls: a stream's end

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
        self.asked.append((index, keep))
        self.as_stream.append(stream)
        self.sizes.add(bs)
        return bytes([index]) * BS

    def stores_stream(self, info: ObjectInfo) -> bool:
        self.streams += 1
        return False

    def streamed(self, info: ObjectInfo) -> None:
        self.ended += 1

    async def get_part(self, info: ObjectInfo, index: int, bs: int, start: int, stop: int) -> bytes:
        self.parts.append((index, start, stop))
        self.sizes.add(bs)
        return bytes([index]) * (stop - start)


class _GatedTier(LocalTier):
    """A disk tier whose writes wait for ``gate`` (a disk slower than the links)."""

    def __init__(self, gate: threading.Event, path: Path, capacity: int) -> None:
        super().__init__(path, capacity)
        self._gate = gate

    def put(
        self, block_id: str, data: bytes, *, direct: bool = False, read_back: bool = False
    ) -> None:
        self._gate.wait(10)
        super().put(block_id, data, direct=direct, read_back=read_back)


async def test_read_ahead_opens_up_as_a_stream_goes_on_and_is_not_kept() -> None:
    blocks = 40
    info = ObjectInfo("s3://b/k", "s3://b", "k", blocks * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=8)  # type: ignore[arg-type]
    furthest = []
    for index in range(12):
        for offset in range(index * BS, (index + 1) * BS, BS // 2):  # two reads a block
            assert bytes(await reader.read(offset, BS // 2)) == bytes([index]) * (BS // 2)
        await asyncio.sleep(0)  # let the read-ahead tasks ask
        furthest.append(max(i for i, _ in fetcher.asked))
    # The window doubles with each block read, from 2 up to the depth of 8 (a block
    # alone reaches the reader first, rather than sharing the links with 8 others).
    assert furthest[:5] == [2, 5, 10, 11, 12]
    assert furthest[-1] == 11 + 8
    # Each block asked once; read-ahead blocks are left to the kernel's page cache.
    assert sorted(i for i, _ in fetcher.asked) == list(range(20))
    assert fetcher.asked[0] == (0, True)
    assert all(not keep for _, keep in fetcher.asked[1:])
    # Every block a stream reads whole is asked as a stream's (stored, if at all, past
    # the page cache, where the kernel keeps the reader's copy), and whether the stream
    # stores its blocks is asked once; its end is told at close.
    assert all(fetcher.as_stream)
    assert fetcher.streams == 1
    assert fetcher.ended == 0
    reader.close()
    assert fetcher.ended == 1


async def test_read_ahead_never_exceeds_a_depth_below_the_first_window() -> None:
    """`--prefetch-blocks 1` holds at most the block being read and the next one."""
    info = ObjectInfo("s3://b/k", "s3://b", "k", 10 * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=1)  # type: ignore[arg-type]
    for offset in range(0, 3 * BS, BS // 2):
        await reader.read(offset, BS // 2)
        await asyncio.sleep(0)
        reading = offset // BS
        assert max(i for i, _ in fetcher.asked) <= reading + 1
    reader.close()


async def test_a_late_read_of_the_block_before_is_not_fetched_again() -> None:
    """The kernel's reads of a file run concurrently and can arrive out of order: the
    tail of block k after the head of block k+1 must not fetch block k a second time."""
    info = ObjectInfo("s3://b/k", "s3://b", "k", 10 * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=4)  # type: ignore[arg-type]
    half = BS // 2
    for index in range(6):
        head, tail = index * BS, index * BS + half
        if index % 2:  # odd blocks: the head of the next block overtakes this tail
            assert bytes(await reader.read(head, half)) == bytes([index]) * half
            assert bytes(await reader.read(head + BS, half)) == bytes([index + 1]) * half
            assert bytes(await reader.read(tail, half)) == bytes([index]) * half
        else:
            assert bytes(await reader.read(head, half)) == bytes([index]) * half
            assert bytes(await reader.read(tail, half)) == bytes([index]) * half
        await asyncio.sleep(0)
    asked = [i for i, _ in fetcher.asked]
    assert len(asked) == len(set(asked)), f"blocks fetched twice: {asked}"
    assert fetcher.parts == []  # and no read taken for a jump
    reader.close()


async def test_reads_overtaken_by_reads_blocks_further_on_are_no_jump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel hands mountd its read-ahead reads in any order, and the tail of block
    ``k`` can come after reads of ``k + 3``. Such a read is answered from the block
    already fetched: taken for a jump, it fetched its bytes again as a range, restarted
    the read-ahead window and cancelled blocks on their way (which were fetched again)."""
    monkeypatch.setattr(prefetch, "LATE_BYTES", 4 * BS)
    blocks = 24
    info = ObjectInfo("s3://b/k", "s3://b", "k", blocks * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=8)  # type: ignore[arg-type]
    half = BS // 2
    offsets = list(range(0, blocks * BS, half))
    # Every fourth block's tail is overtaken by the reads of the next three blocks.
    order: list[int] = []
    late: list[int] = []
    for offset in offsets:
        index = offset // BS
        if index % 4 == 1 and offset % BS:
            late.append(offset)
            continue
        order.append(offset)
        if late and index == late[0] // BS + 3 and offset % BS:
            order.append(late.pop(0))
    order += late
    assert sorted(order) == offsets
    for offset in order:
        got = await reader.read(offset, half)
        assert bytes(got) == bytes([offset // BS]) * half
        await asyncio.sleep(0)
    asked = [i for i, _ in fetcher.asked]
    assert sorted(asked) == list(range(blocks)), f"blocks fetched twice or not at all: {asked}"
    assert fetcher.parts == []
    # Further back than LATE_BYTES is a jump again: only the bytes read are fetched.
    assert bytes(await reader.read(2 * BS, half)) == bytes([2]) * half
    assert fetcher.parts == [(2, 0, half)]
    reader.close()


async def test_random_reads_coming_back_to_blocks_are_no_stream() -> None:
    """A random reader going back and forth between two blocks a few apart (each read of
    the earlier one a late read of the later one's "stream") reads ranges, never whole
    blocks, and causes no read-ahead: its reads start where none ended."""
    info = ObjectInfo("s3://b/k", "s3://b", "k", 64 * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=4)  # type: ignore[arg-type]
    reader._late = 4  # LATE_BYTES is 4 real blocks: both blocks are within it
    for k in range(BS // 2):
        for index in (1, 3):
            offset = index * BS + 2 * k + 1  # a different byte of the block each time
            assert bytes(await reader.read(offset, 1)) == bytes([index])
        await asyncio.sleep(0)
    assert fetcher.asked == []
    assert len(fetcher.parts) == BS
    reader.close()


async def test_reads_waiting_for_one_block_share_one_fetch() -> None:
    """The kernel sends a file's first reads at once; while the first waits for its
    block, the others of that block wait for the same fetch instead of starting one."""
    info = ObjectInfo("s3://b/k", "s3://b", "k", 10 * BS, "v1", 0.0)
    gate = asyncio.Event()

    class GatedFetcher(RecordingFetcher):
        async def get(self, info: ObjectInfo, index: int, bs: int, **kw: bool) -> bytes:
            self.asked.append((index, kw.get("keep", True)))
            await gate.wait()
            return bytes([index]) * BS

    fetcher = GatedFetcher()
    reader = FileReader(fetcher, info, depth=4)  # type: ignore[arg-type]
    half = BS // 2
    reads = [asyncio.create_task(reader.read(offset, half)) for offset in range(0, 3 * BS, half)]
    await asyncio.sleep(0)
    gate.set()
    got = await asyncio.gather(*reads)
    assert [bytes(g) for g in got] == [bytes([o // BS]) * half for o in range(0, 3 * BS, half)]
    asked = [i for i, _ in fetcher.asked]
    assert len(asked) == len(set(asked)), f"blocks fetched twice: {asked}"
    reader.close()


async def test_a_jump_across_a_block_boundary_fetches_only_the_bytes_read() -> None:
    info = ObjectInfo("s3://b/k", "s3://b", "k", 10 * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=4)  # type: ignore[arg-type]
    got = await reader.read(4 * BS - 3, 5)  # the last 3 bytes of block 3, 2 of block 4
    assert bytes(got) == bytes([3]) * 3 + bytes([4]) * 2
    assert fetcher.parts == [(3, BS - 3, BS), (4, 0, 2)]
    assert fetcher.asked == []
    reader.close()


async def test_an_open_file_fetches_blocks_of_the_size_it_was_cut_with() -> None:
    """A cluster block-size change under an open file must not mix two geometries: the
    reader's indexes and offsets are in the size it opened with, so every fetch names it
    (the node refuses a size that is not the cluster's; the client then reads the origin)."""
    info = ObjectInfo("s3://b/k", "s3://b", "k", 6 * BS, "v1", 0.0)
    fetcher = RecordingFetcher()
    reader = FileReader(fetcher, info, depth=2)  # type: ignore[arg-type]
    assert bytes(await reader.read(0, 4)) == b"\x00" * 4
    fetcher.block_size = 2 * BS  # the cluster setting changes
    assert bytes(await reader.read(3 * BS + 1, 4)) == b"\x03" * 4
    assert bytes(await reader.read(5 * BS + 1, 4)) == b"\x05" * 4
    assert fetcher.sizes == {BS}


class _PagesClient:
    """Stands in for CacheClient under BlockFetcher: block ``i`` of any file is 4096 bytes
    of value ``i + 1``; its id names the file's size and the index."""

    memory_bytes = 0  # no memory tier: random reads pull into the disk tier alone
    block_size = 4096

    def __init__(self) -> None:
        self.reads: list[int] = []

    def block_id(self, info: ObjectInfo, index: int, bs: int) -> str:
        return f"{info.size:016x}{index:016x}"

    def has_local(self, block_id: str) -> bool:
        return False

    async def read_block(
        self, info: ObjectInfo, index: int, *, keep: bool, block_size: int
    ) -> bytes:
        self.reads.append(index)
        return bytes([index + 1]) * 4096

    async def read_part(
        self, info: ObjectInfo, index: int, start: int, stop: int, bs: int
    ) -> bytes:
        return bytes([index + 1]) * (stop - start)


async def test_blocks_waiting_for_the_disk_tier_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk tier slower than the links: a block fetched while MAX_STORING others wait
    to be written is not stored (their buffers would grow with the file, the reader is
    not held up); once they are written, blocks are stored again."""
    monkeypatch.setattr(prefetch, "MAX_STORING", 2)
    gate = threading.Event()

    tier = _GatedTier(gate, tmp_path, 64 * 4096)
    tier.open()
    fetcher = BlockFetcher(None, tier)  # type: ignore[arg-type]  # storing needs no client
    ids = [f"{i:032x}" for i in range(5)]
    for block_id in ids[:4]:
        fetcher._store(block_id, bytes(4096), read_back=False)
    gate.set()
    for _ in range(500):
        if not fetcher._landing:
            break
        await asyncio.sleep(0.01)
    assert [tier.has(block_id) for block_id in ids[:4]] == [True, True, False, False]
    fetcher._store(ids[4], bytes(4096), read_back=False)
    fetcher.close()  # waits for the tier's threads
    assert tier.has(ids[4])


async def test_a_whole_block_being_written_to_the_disk_tier_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    """A block fetched and still on its way to the disk tier (its write waits for the
    disk) is answered, whole, from the bytes being written, not asked of the cluster
    again."""
    gate = threading.Event()
    info = ObjectInfo("s3://b/k", "s3://b", "k", 2 * 4096, "v1", 0.0)
    tier = _GatedTier(gate, tmp_path, 64 * 4096)
    tier.open()
    client = _PagesClient()
    fetcher = BlockFetcher(client, tier)  # type: ignore[arg-type]
    try:
        assert await fetcher.get(info, 1, 4096, keep=False) == b"\x02" * 4096
        assert fetcher._landing  # its write waits for the gate
        assert await fetcher.get(info, 1, 4096, keep=False) == b"\x02" * 4096
        assert client.reads == [1]
    finally:
        gate.set()
        fetcher.close()
    assert tier.has(client.block_id(info, 1, 4096))


async def test_a_range_read_of_a_block_not_in_the_disk_tier_does_not_wait_for_its_threads(
    tmp_path: Path,
) -> None:
    """While the disk tier's threads are all busy (writing the blocks a fresh mount pulls),
    a random read of a block the tier does not hold goes to the cluster at once instead
    of queueing for a thread only to find the block absent."""
    gate = threading.Event()
    info = ObjectInfo("s3://b/k", "s3://b", "k", 4 * 4096, "v1", 0.0)
    tier = LocalTier(tmp_path, 64 * 4096)
    tier.open()
    fetcher = BlockFetcher(_PagesClient(), tier)  # type: ignore[arg-type]
    assert fetcher._disk is not None
    busy = [fetcher._disk.submit(gate.wait, 30) for _ in range(prefetch.TIER_THREADS)]
    try:
        got = await asyncio.wait_for(fetcher.get_part(info, 2, 4096, 100, 200), 5)
        assert got == b"\x03" * 100
    finally:
        gate.set()
        for job in busy:
            job.result()
        fetcher.close()


async def test_a_stream_stores_its_blocks_once_an_earlier_one_through_the_file_ended(
    tmp_path: Path,
) -> None:
    """A stream through a file stores nothing in the disk tier, nor do streams through it
    running at the same time; once one has ended, the next ones store what they fetch,
    in this mount or a later one on the same tier. A file larger than the tier is never
    stored by a stream (it would only evict itself ahead of its next pass); a block of it
    read whole outside a stream is still stored."""
    tier = LocalTier(tmp_path, 4 * 4096 + 1024)  # room for four blocks and their trailers
    tier.open()
    client = _PagesClient()
    fetcher = BlockFetcher(client, tier)  # type: ignore[arg-type]
    fits = ObjectInfo("s3://b/small", "s3://b", "small", 4 * 4096, "v1", 0.0)
    larger = ObjectInfo("s3://b/large", "s3://b", "large", 8 * 4096, "v1", 0.0)

    async def read(reader: FileReader, index: int) -> None:
        """Block ``index`` read whole, as the start of a stream, by ``reader``."""
        got = await reader.read(index * 4096, 4096)
        assert bytes(got) == bytes([index + 1]) * 4096

    def stored(info: ObjectInfo, index: int) -> bool:
        return tier.has(client.block_id(info, index, 4096))

    first, alongside = (FileReader(fetcher, fits, depth=0) for _ in range(2))
    await read(first, 0)
    await read(alongside, 0)
    alongside.close()
    first.close()
    for _ in range(2):  # larger: ended twice, still a first stream each time
        reader = FileReader(fetcher, larger, depth=0)
        await read(reader, 0)
        reader.close()
    assert await fetcher.get(larger, 1, 4096) == b"\x02" * 4096  # no stream: stored
    fetcher.close()  # waits for the tier's threads, saves the streams that ended
    assert [stored(fits, 0), stored(larger, 0), stored(larger, 1)] == [False, False, True]
    # A later mount of the tier: the stream that ended is remembered.
    tier = LocalTier(tmp_path, 4 * 4096 + 1024)
    tier.open()
    fetcher = BlockFetcher(client, tier)  # type: ignore[arg-type]
    reader = FileReader(fetcher, fits, depth=0)
    await read(reader, 0)
    reader.close()
    fetcher.close()
    assert tier.has(client.block_id(fits, 0, 4096))


async def test_a_written_block_goes_to_the_disk_tier_past_the_page_cache(tmp_path: Path) -> None:
    """fill: a block a writer just wrote is pushed to its owners and stored in the disk
    tier with O_DIRECT, as a fetched one (its parts are not in the page cache, so the
    loop's read declines them), and served from there, checked."""
    size = 4 << 20  # a real block: O_DIRECT writes whole pages
    info = ObjectInfo("s3://b/k", "s3://b", "k", size, "v1", 0.0)
    pushed: list[tuple[int, int]] = []

    class Client:
        async def fill(self, info: ObjectInfo, index: int, data: bytes, bs: int) -> None:
            pushed.append((index, len(data)))

        def block_id(self, info: ObjectInfo, index: int, bs: int) -> str:
            return f"{index:032x}"

    tier = LocalTier(tmp_path, 4 * size)
    tier.open()
    fetcher = BlockFetcher(Client(), tier)  # type: ignore[arg-type]
    data = os.urandom(size)
    await fetcher.fill(info, 0, size, data)
    fetcher.close()
    assert pushed == [(0, size)]
    block_id = f"{0:032x}"
    assert tier.get_part_cached(block_id, 100, 70_000) is None
    assert tier.get(block_id) == data
