"""BlockStore on real cache dirs: integrity, placement, limits, restart and failing dirs."""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import random
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cachenode.cachedir
import cachenode.store as store_mod
from cachenode.cachedir import CacheDirSpec
from cachenode.store import INLINE_READ_MAX, BlockBytes, BlockPart, BlockStore
from clientlib.blockfile import (
    PART_SIZE,
    BlockFile,
    block_checksum,
    block_filename,
    resident,
    trailer_length,
)
from clientlib.blocks import MAX_BLOCK_SIZE
from clientlib.errors import BadRequest, ConfigError

KiB = 1024
MiB = 1024 * KiB
SMALL = 4 * KiB
LARGE = INLINE_READ_MAX + 3 * KiB  # read through the thread pool


def new_id() -> str:
    return os.urandom(16).hex()


def block_files(root: Path) -> dict[str, Path]:
    """Block id -> file of every block file under one cache dir."""
    return {p.name[:32]: p for p in (root / "blocks").glob("*/*")}


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in block_files(root).values())


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., BlockStore]]:
    """Open a store on dirs ``<name>0..N`` under tmp_path; all are closed at the end."""
    opened: list[BlockStore] = []

    def make(*sizes: int, name: str = "d", **kwargs) -> BlockStore:
        specs = [CacheDirSpec(tmp_path / f"{name}{i}", size) for i, size in enumerate(sizes)]
        store = BlockStore(specs, **kwargs)
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.mark.parametrize("size", [0, 1, SMALL, LARGE])
async def test_put_then_get_returns_the_same_bytes_across_dirs(make_store, size):
    store = make_store(4 * MiB, 4 * MiB, 4 * MiB)
    blocks = {new_id(): os.urandom(size) for _ in range(12)}
    for block_id, data in blocks.items():
        assert await store.put(block_id, data)
    for block_id, data in blocks.items():
        assert block_id in store
        assert await store.get(block_id) == data
    assert store.used_bytes == size * len(blocks)
    assert store.block_count == len(blocks)
    assert await store.get(new_id()) is None


async def test_blocks_spread_over_dirs_in_proportion_to_dir_size(make_store, tmp_path):
    store = make_store(MiB, MiB, 2 * MiB)
    for _ in range(400):
        assert await store.put(new_id(), b"x" * 100)
    counts = [len(block_files(tmp_path / f"d{i}")) for i in range(3)]
    assert sum(counts) == 400
    # Expected 100 / 100 / 200; the bounds are > 5 standard deviations away.
    assert 50 < counts[0] < 150 and 50 < counts[1] < 150 and 140 < counts[2] < 260


async def test_adding_a_dir_moves_blocks_only_to_the_new_dir(tmp_path):
    ids = [new_id() for _ in range(500)]
    specs = [CacheDirSpec(tmp_path / f"d{i}", MiB) for i in range(3)]
    before_store = BlockStore(specs[:2])
    before_store.open()
    before = [before_store.placement(i)[0] for i in ids]
    before_store.close()
    after_store = BlockStore(specs)
    after_store.open()
    after = [after_store.placement(i)[0] for i in ids]
    after_store.close()
    moved = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert moved, "a third dir of equal size should win about a third of the ids"
    assert all(a == specs[2].path for _, a in moved)


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("damage", ["flip", "truncate", "zero_tail"])
async def test_corrupted_block_file_is_never_served_and_is_removed(
    make_store, tmp_path, size, damage
):
    store = make_store(4 * MiB)
    block_id = new_id()
    data = os.urandom(size)
    assert await store.put(block_id, data)
    path = block_files(tmp_path / "d0")[block_id]
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[size // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[: size - 1]
    else:  # a torn write: right length, tail never written
        raw[size - 512 :] = bytes(512)
    path.write_bytes(bytes(raw))

    assert await store.get(block_id) is None
    assert not path.exists()
    assert block_id not in store
    assert store.used_bytes == 0
    # The caller refetches and stores it again.
    assert await store.put(block_id, data)
    assert await store.get(block_id) == data


async def test_restart_serves_blocks_written_before(make_store):
    store = make_store(MiB, MiB)
    blocks = {new_id(): os.urandom(SMALL + i) for i in range(30)}
    for block_id, data in blocks.items():
        assert await store.put(block_id, data)
    used = store.used_bytes
    store.close()

    again = make_store(MiB, MiB)
    assert again.block_count == len(blocks)
    assert again.used_bytes == used
    for block_id, data in blocks.items():
        assert await again.get(block_id) == data


async def test_open_removes_temp_leftovers_and_malformed_names(make_store, tmp_path):
    root = tmp_path / "d0"
    good_id, data = "ab" + new_id()[2:], os.urandom(SMALL)
    checksum = block_checksum(data)
    good = root / "blocks" / "ab" / block_filename(good_id, SMALL, checksum)
    twin = root / "blocks" / "ab" / block_filename(good_id, SMALL, checksum ^ 1)
    bad_names = [
        "ab/notablock",
        f"ab/{good_id}.{SMALL:016x}",
        f"ab/{good_id}.{SMALL}.{checksum:016x}",  # length not zero-padded (nor hex)
        f"ab/{good_id.upper()}.{SMALL:016x}.{checksum:016x}",
        f"ab/{good_id}.{SMALL:016x}.{checksum:016X}",
        f"ab/{good_id}.{MAX_BLOCK_SIZE + 1:016x}.{checksum:016x}",
        f"ab/{block_filename('cd' + new_id()[2:], SMALL, checksum)}",  # wrong shard
    ]
    for rel in [*bad_names, good.relative_to(root / "blocks")]:
        (root / "blocks" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "blocks" / rel).write_bytes(data)
    (root / "tmp").mkdir()
    leftover = root / "tmp" / f"{new_id()}.1.2.tmp"
    leftover.write_bytes(b"half a block")

    store = make_store(MiB)
    assert not leftover.exists()
    assert all(not (root / "blocks" / rel).exists() for rel in bad_names)
    assert good.exists()
    assert store.block_count == 1
    assert await store.get(good_id) == data
    assert not twin.exists()


async def test_open_keeps_one_copy_of_a_block_found_twice(make_store, tmp_path):
    block_id, data = new_id(), os.urandom(SMALL)
    checksum = block_checksum(data)
    for i, tag in enumerate((checksum, checksum ^ 1)):
        shard = tmp_path / f"d{i}" / "blocks" / block_id[:2]
        shard.mkdir(parents=True)
        (shard / block_filename(block_id, SMALL, tag)).write_bytes(data)
    store = make_store(MiB, MiB)
    assert store.block_count == 1
    assert store.used_bytes == SMALL
    copies = [p for i in range(2) for p in block_files(tmp_path / f"d{i}").values()]
    assert len(copies) == 1


async def test_usage_stays_within_each_dir_size_under_a_stream_of_puts(make_store, tmp_path):
    sizes = (64 * KiB, 96 * KiB)
    evicted: list[int] = []
    store = make_store(*sizes, on_evict=evicted.append)
    rng = random.Random(5)
    put = 0
    for _ in range(300):
        # Full blocks, and shorter last blocks of objects.
        nbytes = rng.choice((SMALL, SMALL, SMALL, rng.randrange(1, SMALL)))
        assert await store.put(new_id(), os.urandom(nbytes))
        put += nbytes
        for i, size in enumerate(sizes):
            assert disk_bytes(tmp_path / f"d{i}") <= size
        assert store.used_bytes <= store.capacity_bytes == sum(sizes)
    assert store.used_bytes == sum(disk_bytes(tmp_path / f"d{i}") for i in range(2))
    # on_evict saw every block that left, once.
    assert sum(evicted) == put - store.used_bytes
    assert len(evicted) == 300 - store.block_count


async def test_put_evicts_to_keep_free_space_ratio_of_the_disk(make_store, monkeypatch):
    total, others = 1000 * SMALL, 600 * SMALL
    store: BlockStore | None = None

    def fake_disk_usage(path: str) -> tuple[int, int]:
        used = store.used_bytes if store is not None else 0
        return total, total - others - used

    monkeypatch.setattr(cachenode.cachedir, "disk_usage", fake_disk_usage)
    store = make_store(100 * MiB, free_space_ratio=0.1)
    allowed = total - others - int(0.1 * total)  # 300 blocks
    for _ in range(500):
        assert await store.put(new_id(), os.urandom(SMALL))
        assert store.used_bytes <= allowed
    assert store.used_bytes >= allowed - SMALL


async def test_put_is_refused_when_free_space_cannot_be_reached(make_store, monkeypatch):
    monkeypatch.setattr(cachenode.cachedir, "disk_usage", lambda path: (100 * SMALL, 5 * SMALL))
    store = make_store(100 * MiB, free_space_ratio=0.1)
    assert not await store.put(new_id(), os.urandom(SMALL))
    assert store.block_count == 0


async def test_block_larger_than_every_dir_is_refused(make_store, tmp_path):
    store = make_store(SMALL, 2 * SMALL)
    block_id = new_id()
    assert not await store.put(block_id, os.urandom(2 * SMALL + 1))
    assert block_id not in store
    assert not block_files(tmp_path / "d0") and not block_files(tmp_path / "d1")


async def test_put_returns_false_on_enospc_and_keeps_the_dir(make_store, monkeypatch):
    store = make_store(MiB)

    def full(*args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(store_mod, "_write_block", full)
        assert not await store.put(new_id(), os.urandom(SMALL))
    assert store.capacity_bytes == MiB
    assert await store.put(new_id(), os.urandom(SMALL))


def _ids_preferring(store: BlockStore, root: Path, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        block_id = new_id()
        if store.placement(block_id)[0] == root:
            ids.append(block_id)
    return ids


@pytest.mark.parametrize("how", ["removed", "replaced_by_file"])
async def test_failed_dir_is_taken_out_and_other_dirs_keep_working(make_store, tmp_path, how):
    store = make_store(MiB, MiB)
    lost_root, kept_root = tmp_path / "d0", tmp_path / "d1"
    lost = {i: os.urandom(SMALL) for i in _ids_preferring(store, lost_root, 5)}
    kept = {i: os.urandom(SMALL) for i in _ids_preferring(store, kept_root, 5)}
    for block_id, data in {**lost, **kept}.items():
        assert await store.put(block_id, data)
    shutil.rmtree(lost_root)
    if how == "replaced_by_file":
        lost_root.write_bytes(b"not a dir")

    # New blocks that would have gone to the failed dir are stored in the other one.
    fresh = {i: os.urandom(SMALL) for i in _ids_preferring(store, lost_root, 5)}
    for block_id, data in fresh.items():
        assert await store.put(block_id, data)
    assert store.capacity_bytes == MiB
    for block_id in lost:
        assert await store.get(block_id) is None
    for block_id, data in {**kept, **fresh}.items():
        assert await store.get(block_id) == data
    assert set(block_files(kept_root)) == set(kept) | set(fresh)


async def test_missing_dir_found_on_read_is_taken_out(make_store, tmp_path):
    store = make_store(MiB, MiB)
    lost_id = _ids_preferring(store, tmp_path / "d0", 1)[0]
    assert await store.put(lost_id, b"data")
    shutil.rmtree(tmp_path / "d0")
    assert await store.get(lost_id) is None
    assert store.capacity_bytes == MiB
    assert store.placement(new_id()) == [tmp_path / "d1"]


async def test_evict_drops_blocks_and_counts_only_present_ones(make_store, tmp_path):
    evicted: list[int] = []
    store = make_store(MiB, MiB, on_evict=evicted.append)
    ids = [new_id() for _ in range(6)]
    for block_id in ids:
        assert await store.put(block_id, os.urandom(SMALL))
    assert await store.evict([*ids[:4], new_id()]) == 4
    assert evicted == [SMALL] * 4
    for block_id in ids[:4]:
        assert block_id not in store
        assert await store.get(block_id) is None
    remaining = set(block_files(tmp_path / "d0")) | set(block_files(tmp_path / "d1"))
    assert remaining == set(ids[4:])
    assert store.used_bytes == 2 * SMALL


async def test_concurrent_puts_of_one_id_store_one_file(make_store, tmp_path):
    store = make_store(4 * MiB)
    block_id, data = new_id(), os.urandom(LARGE)
    results = await asyncio.gather(*(store.put(block_id, data) for _ in range(10)))
    assert results == [True] * 10
    assert list(block_files(tmp_path / "d0")) == [block_id]
    assert not list((tmp_path / "d0" / "tmp").iterdir())
    assert store.used_bytes == LARGE and store.block_count == 1


def evict_from_page_cache(path: Path) -> None:
    """Write the file back and drop its pages, so the next read has to go to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_block_file(block: BlockFile) -> bytes:
    try:
        return os.pread(block.fd, block.nbytes, 0)
    finally:
        block.close()


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_open_block_gives_bytes_when_small_and_a_verified_fd_when_large(make_store, size):
    store = make_store(4 * MiB)
    block_id, data = new_id(), os.urandom(size)
    assert await store.open_block(block_id) is None
    assert await store.put(block_id, data)
    got = await store.open_block(block_id)
    if size <= INLINE_READ_MAX:
        assert got == BlockBytes(data) and got.nbytes == size
    else:
        assert isinstance(got, BlockFile) and got.nbytes == size
        assert read_block_file(got) == data
    got = await store.open_block(block_id, read_max=0)
    assert isinstance(got, BlockFile) and read_block_file(got) == data


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("damage", ["flip", "truncate", "zero_tail"])
async def test_open_block_refuses_and_removes_a_corrupted_file(make_store, tmp_path, size, damage):
    store = make_store(4 * MiB)
    block_id, data = new_id(), os.urandom(size)
    assert await store.put(block_id, data)
    path = block_files(tmp_path / "d0")[block_id]
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[size // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[: size - 1]
    else:
        raw[size - 512 :] = bytes(512)
    path.write_bytes(bytes(raw))

    assert await store.open_block(block_id, read_max=0) is None
    assert not path.exists()
    assert block_id not in store
    assert await store.put(block_id, data)
    got = await store.open_block(block_id, read_max=0)
    assert isinstance(got, BlockFile) and read_block_file(got) == data


async def test_open_block_fd_still_reads_the_block_after_eviction(make_store, tmp_path):
    store = make_store(4 * MiB)
    block_id, data = new_id(), os.urandom(LARGE)
    assert await store.put(block_id, data)
    got = await store.open_block(block_id)
    assert isinstance(got, BlockFile)
    assert await store.evict([block_id]) == 1
    assert block_id not in block_files(tmp_path / "d0")
    assert read_block_file(got) == data


async def test_open_block_cancelled_in_the_pool_leaks_no_fd(make_store):
    store = make_store(4 * MiB)
    block_id, data = new_id(), os.urandom(LARGE)
    assert await store.put(block_id, data)
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        task = asyncio.ensure_future(store.open_block(block_id))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.2)
    assert len(os.listdir("/proc/self/fd")) <= fds_before


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_get_racing_evict_returns_the_bytes_or_none(make_store, size):
    store = make_store(4 * MiB)
    for _ in range(30):
        block_id, data = new_id(), os.urandom(size)
        assert await store.put(block_id, data)
        got, _ = await asyncio.gather(store.get(block_id), store.evict([block_id]))
        assert got in (data, None)
        assert await store.get(block_id) is None
    assert store.used_bytes == 0


async def test_evicted_block_put_again_at_once_keeps_its_new_file(make_store, monkeypatch):
    real_unlink = store_mod.unlink_quietly

    def slow_unlink(paths) -> None:
        time.sleep(0.05)  # widen the window in which the new file exists
        real_unlink(paths)

    monkeypatch.setattr(store_mod, "unlink_quietly", slow_unlink)
    store = make_store(4 * MiB)
    block_id, data = new_id(), os.urandom(SMALL)
    for _ in range(3):
        assert await store.put(block_id, data)
        await asyncio.gather(store.evict([block_id]), store.put(block_id, data))
        # The put must wait for the eviction's unlink: the new file has the same name.
        assert await store.get(block_id) == data


async def test_get_protects_a_block_from_a_scan_but_contains_does_not(make_store):
    survived = {}
    for how in ("get", "contains"):
        store = make_store(20 * SMALL, name=how)
        block_id = new_id()
        assert await store.put(block_id, os.urandom(SMALL))
        if how == "get":
            assert await store.get(block_id) is not None
        else:
            assert block_id in store
        for _ in range(100):
            assert await store.put(new_id(), os.urandom(SMALL))
        survived[how] = block_id in store
    assert survived == {"get": True, "contains": False}


async def test_restart_with_a_smaller_size_evicts_down_to_it(make_store, tmp_path):
    store = make_store(MiB)
    for _ in range(20):
        assert await store.put(new_id(), os.urandom(SMALL))
    store.close()
    evicted: list[int] = []
    smaller = make_store(5 * SMALL, on_evict=evicted.append)
    assert smaller.used_bytes == 5 * SMALL == disk_bytes(tmp_path / "d0")
    assert len(evicted) == 15


async def test_block_over_the_maximum_block_size_is_rejected(make_store):
    store = make_store(MiB)
    with pytest.raises(BadRequest):
        await store.put(new_id(), bytes(MAX_BLOCK_SIZE + 1))


async def test_malformed_block_ids_are_rejected(make_store):
    store = make_store(MiB)
    for bad in ("../../etc/passwd", "ABCDEF" * 6, "0" * 31, "0" * 33, ""):
        with pytest.raises(BadRequest):
            await store.get(bad)
        with pytest.raises(BadRequest):
            await store.put(bad, b"x")
        with pytest.raises(BadRequest):
            await store.evict([bad])
        with pytest.raises(BadRequest):
            bad in store  # noqa: B015


async def test_a_dir_used_by_another_store_is_refused(make_store, tmp_path):
    make_store(MiB)
    second = BlockStore([CacheDirSpec(tmp_path / "d0", MiB)])
    with pytest.raises(ConfigError, match="in use"):
        second.open()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dirs": []},
        {"free_space_ratio": 1.0},
        {"free_space_ratio": -0.1},
        {"policy": "lfu"},
        {"dirs": [CacheDirSpec(Path("/tmp/x"), 0)]},
        {"dirs": [CacheDirSpec(Path("/tmp/x"), 1), CacheDirSpec(Path("/tmp/x/"), 1)]},
    ],
)
def test_invalid_configuration_is_rejected_with_config_error(kwargs):
    kwargs.setdefault("dirs", [CacheDirSpec(Path("/tmp/x"), 1)])
    with pytest.raises(ConfigError):
        BlockStore(kwargs.pop("dirs"), **kwargs)


async def test_clean_restart_loads_the_index_from_its_snapshot(make_store, tmp_path, caplog):
    store = make_store(64 * MiB)
    blocks = {new_id(): os.urandom(SMALL + i) for i in range(20)}
    for block_id, data in blocks.items():
        assert await store.put(block_id, data)
    await asyncio.sleep(0.05)  # shard mtimes older than the snapshot (see indexsnapshot)
    store.close()
    snapshot = tmp_path / "d0" / "index.snapshot"
    assert snapshot.stat().st_size == 16 + 16 + 256 * 8 + 32 * len(blocks)
    caplog.set_level("INFO", logger="cachenode")
    again = make_store(64 * MiB)
    assert "index loaded from its snapshot" in caplog.text
    assert not snapshot.exists()  # used once: a crash later must not reuse it
    assert again.block_count == len(blocks) and again.used_bytes == store.used_bytes
    for block_id, data in blocks.items():
        assert await again.get(block_id) == data


@pytest.mark.parametrize("change", ["file removed", "file added", "snapshot damaged"])
async def test_index_snapshot_is_not_trusted_after_a_change(make_store, tmp_path, caplog, change):
    store = make_store(64 * MiB)
    blocks = {new_id(): os.urandom(SMALL) for _ in range(10)}
    for block_id, data in blocks.items():
        assert await store.put(block_id, data)
    await asyncio.sleep(0.05)
    store.close()
    snapshot = tmp_path / "d0" / "index.snapshot"
    if change == "file removed":
        gone = next(iter(blocks))
        block_files(tmp_path / "d0")[gone].unlink()
        del blocks[gone]
    elif change == "file added":
        extra, data = new_id(), os.urandom(SMALL)
        name = block_filename(extra, SMALL, block_checksum(data))
        (tmp_path / "d0" / "blocks" / extra[:2] / name).write_bytes(data)
        blocks[extra] = data
    else:
        raw = bytearray(snapshot.read_bytes())
        raw[-1] ^= 0xFF
        snapshot.write_bytes(bytes(raw))
    caplog.set_level("INFO", logger="cachenode")
    again = make_store(64 * MiB)
    assert "index snapshot not used" in caplog.text
    assert "loaded from its snapshot" not in caplog.text
    assert again.block_count == len(blocks)
    for block_id, data in blocks.items():
        assert await again.get(block_id) == data


async def test_a_range_is_checked_by_its_parts_and_a_bad_part_by_the_whole_block(
    make_store, tmp_path
):
    store = make_store(16 * MiB)
    block_id, data = new_id(), os.urandom(4 * MiB)
    assert await store.put(block_id, data)
    path = block_files(tmp_path / "d0")[block_id]
    assert path.stat().st_size == len(data) + trailer_length(len(data))
    raw = bytearray(path.read_bytes())
    raw[3 * PART_SIZE + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    # A range in good parts (crossing from part 1 into 2) is served: only those are read,
    # on the event loop while they are in the page cache, else in the pool.
    start, stop = 2 * PART_SIZE - 1000, 2 * PART_SIZE + 64 * KiB
    got = await store.open_block(block_id, read_max=0, part=(start, stop))
    assert got == BlockPart(data[start:stop], len(data))
    evict_from_page_cache(path)
    got = await store.open_block(block_id, read_max=0, part=(start, stop))
    assert isinstance(got, BlockFile)
    try:
        assert os.pread(got.fd, stop - start, start) == data[start:stop]
    finally:
        got.close()
    # A range touching the bad part: the whole block decides, fails, and is dropped.
    bad_part = (3 * PART_SIZE, 3 * PART_SIZE + 10)
    assert await store.open_block(block_id, read_max=0, part=bad_part) is None
    assert not path.exists() and block_id not in store


@pytest.mark.parametrize("file", ["bad trailer", "no trailer"])
async def test_a_range_without_good_part_checksums_is_checked_whole(make_store, tmp_path, file):
    """A damaged trailer does not cost the block, and a file written before part
    checksums existed is still served: both are checked against the file name's checksum."""
    store = make_store(16 * MiB)
    block_id, data = new_id(), os.urandom(MiB + 5)
    assert await store.put(block_id, data)
    path = block_files(tmp_path / "d0")[block_id]
    raw = bytearray(path.read_bytes())
    if file == "bad trailer":
        raw[len(data)] ^= 0x01  # the checksum of part 0, which holds the range
    else:
        raw = raw[: len(data)]
    path.write_bytes(bytes(raw))
    got = await store.open_block(block_id, read_max=0, part=(10, 20))
    assert isinstance(got, BlockFile) and read_block_file(got) == data
    assert await store.get(block_id) == data


def tier_copies(where: Path) -> int:
    """The memory tier's copies open in this process: sealed memfds, and pinned copies in
    ``where`` (nameless files, which ``/proc`` shows as ``<dir>/#<inode> (deleted)``)."""
    links = [
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    return sum(
        link.startswith("/memfd:ringcache-")
        or re.fullmatch(rf"{re.escape(str(where))}/#\d+ \(deleted\)", link) is not None
        for link in links
    )


async def test_memory_tier_copies_hold_a_quarter_of_the_fd_limit_and_close_with_the_store(
    make_store, tmp_path
):
    """Each large block kept in memory is an open file: a tier sized in bytes alone
    could hold more of them than the node may open files (then accept() and every block
    file fail with EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        store = make_store(32 * MiB, memory_bytes=32 * MiB)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    blocks = {new_id(): os.urandom(LARGE) for _ in range(80)}
    for block_id, data in blocks.items():
        assert await store.put(block_id, data)
        for _ in range(2):  # a large block is copied into memory at its second hit
            got = await store.open_block(block_id)
            assert isinstance(got, BlockFile) and read_block_file(got) == data
    assert 0 < tier_copies(tmp_path / "d0") <= 200 // 4
    last = list(blocks)[-1]
    got = await store.open_block(last)  # the newest copy is still served
    assert isinstance(got, BlockFile) and read_block_file(got) == blocks[last]
    store.close()
    assert tier_copies(tmp_path / "d0") == 0


async def test_a_large_blocks_copy_in_memory_is_pinned_in_its_cache_dirs_file_system(
    make_store, tmp_path
):
    """A large block admitted to the memory tier is served from a nameless file made in
    the file system of the cache dir that holds the block (a tier of 6 MiB: its pages
    can be locked under a default RLIMIT_MEMLOCK)."""
    store = make_store(16 * MiB, 16 * MiB, memory_bytes=6 * MiB)
    blocks = {new_id(): os.urandom(LARGE) for _ in range(8)}
    for block_id, data in blocks.items():
        assert await store.put(block_id, data)
    where = {
        block_id: str(tmp_path / d) for d in ("d0", "d1") for block_id in block_files(tmp_path / d)
    }
    assert set(where.values()) == {str(tmp_path / "d0"), str(tmp_path / "d1")}
    for block_id, data in blocks.items():
        for _ in range(2):  # copied into memory at the second hit
            got = await store.open_block(block_id)
            assert isinstance(got, BlockFile) and read_block_file(got) == data
        copy = await store.open_block(block_id)
        assert isinstance(copy, BlockFile)
        try:
            link = os.readlink(f"/proc/self/fd/{copy.fd}")
            assert re.fullmatch(rf"{re.escape(where[block_id])}/#\d+ \(deleted\)", link)
            assert read_block_file(copy._replace(fd=os.dup(copy.fd))) == data
        finally:
            copy.close()


def _cached_pages(path: Path, nbytes: int) -> bool | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident(fd, 0, nbytes)
    finally:
        os.close(fd)


async def test_a_block_out_of_the_page_cache_is_read_past_it_once_then_through_it(
    make_store, tmp_path
):
    """A whole large block on the disk comes as its bytes, read with O_DIRECT, leaving the
    page cache as it was (a stream's block read once); read again, it goes through the
    page cache and comes as its file, sent from there, as do the hits after it."""
    store = make_store(16 * MiB)
    block_id, data = new_id(), os.urandom(4 * MiB)
    assert await store.put(block_id, data, direct=True)
    path = block_files(tmp_path / "d0")[block_id]
    assert _cached_pages(path, len(data)) is False
    first = await store.open_block(block_id)
    assert isinstance(first, BlockBytes) and first.data == data and first.nbytes == len(data)
    assert _cached_pages(path, len(data)) is False
    second = await store.open_block(block_id)
    assert isinstance(second, BlockFile) and read_block_file(second) == data
    assert _cached_pages(path, len(data)) is True
    third = store.read_now(block_id)
    assert isinstance(third, BlockFile)
    third.close()


def _receiver(data: bytes, buf: memoryview, seen: list[str]):  # type: ignore[no-untyped-def]
    """A ``receive`` for put_received that fills ``buf`` with ``data`` on a thread a
    MiB at a time, telling ``progress`` each time, and writes there, as an origin's
    read_into_then does."""

    async def receive(write, progress):  # type: ignore[no-untyped-def]
        def job():  # type: ignore[no-untyped-def]
            for start in range(0, len(data), MiB):
                buf[start : start + MiB] = data[start : start + MiB]
                progress(min(start + MiB, len(data)))
            seen.append("received")
            return write()

        return await asyncio.to_thread(job)

    return receive


def _aligned(nbytes: int) -> memoryview:
    return memoryview(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE))


async def test_put_received_writes_the_block_the_receiver_filled(make_store, tmp_path):
    store = make_store(16 * MiB)
    block_id, data = new_id(), os.urandom(4 * MiB)
    buf, seen = _aligned(len(data)), []
    assert await store.put_received(block_id, buf, _receiver(data, buf, seen))
    assert seen == ["received"]
    path = block_files(tmp_path / "d0")[block_id]
    assert path.name == block_filename(block_id, len(data), block_checksum(data))
    assert _cached_pages(path, len(data)) is False  # written with O_DIRECT
    assert await store.get(block_id) == data
    # Stored already: nothing is received again.
    assert await store.put_received(block_id, buf, _receiver(data, buf, seen))
    assert seen == ["received"]


async def test_put_received_that_fails_to_receive_stores_nothing_and_still_makes_room(
    make_store, tmp_path
):
    store = make_store(8 * MiB + 2 * trailer_length(4 * MiB))
    old = [(new_id(), os.urandom(4 * MiB)) for _ in range(2)]
    for block_id, data in old:
        assert await store.put(block_id, data)

    async def broken(write, progress):  # type: ignore[no-untyped-def]
        def job():  # type: ignore[no-untyped-def]
            progress(2 * MiB)  # half the block came, and was written
            raise ConnectionResetError("origin went away")

        await asyncio.to_thread(job)

    block_id = new_id()
    with pytest.raises(ConnectionResetError):
        await store.put_received(block_id, _aligned(4 * MiB), broken)
    assert block_id not in store
    kept = [i for i, _ in old if i in store]
    assert len(kept) == 1  # the victim evicted for it is gone, file and all
    assert sorted(block_files(tmp_path / "d0")) == kept
    assert store.used_bytes == 4 * MiB
    assert not os.listdir(tmp_path / "d0" / "tmp")


async def test_put_received_whose_write_fails_stores_the_bytes_in_another_dir(
    make_store, tmp_path, monkeypatch
):
    store = make_store(16 * MiB, 16 * MiB)
    block_id, data = new_id(), os.urandom(4 * MiB)
    first = store.placement(block_id)[0]
    real_write = store_mod.blockfile.write_block
    real_finish = store_mod.blockfile.StreamedBlockWrite.finish

    def failing(tmp, final, *args, **kwargs):  # type: ignore[no-untyped-def]
        if final.startswith(str(first)):
            raise OSError(errno.EIO, "I/O error")
        real_write(tmp, final, *args, **kwargs)

    def failing_finish(self, final):  # type: ignore[no-untyped-def]
        if final.startswith(str(first)):
            self.abort()
            raise OSError(errno.EIO, "I/O error")
        real_finish(self, final)

    # The disk fails both ways a block is written: as it arrives, and whole.
    monkeypatch.setattr(store_mod.blockfile, "write_block", failing)
    monkeypatch.setattr(store_mod.blockfile.StreamedBlockWrite, "finish", failing_finish)
    buf = _aligned(len(data))
    assert await store.put_received(block_id, buf, _receiver(data, buf, []))
    other = next(p for p in (tmp_path / "d0", tmp_path / "d1") if p != first)
    assert block_id in block_files(other)
    assert await store.get(block_id) == data


async def test_put_received_and_a_put_of_one_block_store_one_file(make_store, tmp_path):
    store = make_store(16 * MiB)
    block_id, data = new_id(), os.urandom(4 * MiB)
    buf = _aligned(len(data))
    results = await asyncio.gather(
        store.put_received(block_id, buf, _receiver(data, buf, [])),
        store.put(block_id, data),
    )
    assert results == [True, True]
    assert list(block_files(tmp_path / "d0")) == [block_id]
    assert store.used_bytes == len(data)
    assert await store.get(block_id) == data
