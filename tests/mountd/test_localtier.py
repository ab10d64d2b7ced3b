"""The mount's on-disk block tier as a unit, on real files: what it serves, what it
refuses, and that a random read is checked by the parts that hold it."""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

from clientlib.blockfile import PART_SIZE, block_checksum, block_filename, file_length
from clientlib.launcher import wait_until
from mountd import localtier
from mountd.localtier import STREAMS_NAME, LocalTier

MiB = 1024 * 1024


def new_tier(root: Path) -> LocalTier:
    tier = LocalTier(root, 64 * MiB)
    tier.open()
    return tier


def block_path(tier: LocalTier, block_id: str, data: bytes) -> Path:
    """Where the tier keeps a block: a block file, as a cache node names it."""
    return tier.root / block_id[:2] / block_filename(block_id, len(data), block_checksum(data))


def damage(tier: LocalTier, block_id: str, data: bytes, offset: int) -> Path:
    path = block_path(tier, block_id, data)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    return path


def test_blocks_and_ranges_come_back_as_stored(tmp_path: Path) -> None:
    tier = new_tier(tmp_path)
    blocks = {os.urandom(16).hex(): os.urandom(n) for n in (1000, PART_SIZE, 4 * MiB - 5)}
    for block_id, data in blocks.items():
        tier.put(block_id, data)
        assert block_path(tier, block_id, data).stat().st_size == file_length(len(data))
    again = new_tier(tmp_path)  # a restarted mount finds them
    for block_id, data in blocks.items():
        assert again.get(block_id) == data
        for start, stop in ((0, 10), (len(data) - 7, len(data)), (len(data) // 3, len(data))):
            assert again.get_part(block_id, start, stop) == data[start:stop]


def test_a_range_in_good_parts_is_served_and_a_damaged_block_never_is(tmp_path: Path) -> None:
    tier = new_tier(tmp_path)
    block_id, data = os.urandom(16).hex(), os.urandom(4 * MiB)
    tier.put(block_id, data)
    path = damage(tier, block_id, data, 3 * PART_SIZE + 1)
    # Parts 0-2 are whole: a range there is read and checked without the rest.
    assert tier.get_part(block_id, 100, 2 * PART_SIZE + 5) == data[100 : 2 * PART_SIZE + 5]
    # A range in the damaged part falls back to the whole block, which fails: dropped.
    assert tier.get_part(block_id, 3 * PART_SIZE, 3 * PART_SIZE + 10) is None
    assert not path.exists()
    assert tier.get(block_id) is None
    tier.put(block_id, data)  # fetched again and stored again
    assert tier.get(block_id) == data


def test_a_range_read_on_the_loop_is_served_only_checked_and_from_memory(tmp_path: Path) -> None:
    """get_part_cached (the FUSE loop's read, which must never wait for the disk) serves
    a range of a block in the page cache, checked by its parts; a damaged part or a
    block not here is None, and the thread's get_part decides."""
    tier = new_tier(tmp_path)
    block_id, data = os.urandom(16).hex(), os.urandom(4 * MiB)
    # Written through the page cache: a fresh mount's next random read of the block it
    # just stored is served on the loop, not from the disk.
    tier.put(block_id, data)
    assert tier.get_part_cached(block_id, 100, 70_000) == data[100:70_000]
    assert tier.get(block_id) == data  # a whole read, past the page cache, changes nothing
    assert tier.get_part_cached(block_id, 100, 70_000) == data[100:70_000]
    assert tier.get_part_cached(os.urandom(16).hex(), 0, 10) is None
    path = damage(tier, block_id, data, 2 * PART_SIZE + 1)  # written: in the page cache
    assert tier.get_part_cached(block_id, 10, 20) == data[10:20]  # a good part
    assert tier.get_part_cached(block_id, 2 * PART_SIZE, 2 * PART_SIZE + 10) is None
    assert path.exists()  # the loop only declines; the thread's read judges the block
    assert tier.get_part(block_id, 2 * PART_SIZE, 2 * PART_SIZE + 10) is None
    assert not path.exists()


def test_a_block_a_stream_stored_is_written_past_the_page_cache(tmp_path: Path) -> None:
    """put(direct=True), for a block a sequential reader fetched: written with O_DIRECT,
    so none of its parts is in the page cache and the loop's read declines them (a
    buffered write left them there: the case above). It is served, checked, as any block."""
    tier = new_tier(tmp_path)
    block_id, data = os.urandom(16).hex(), os.urandom(4 * MiB)
    tier.put(block_id, data, direct=True)
    assert block_path(tier, block_id, data).stat().st_size == file_length(len(data))
    assert tier.get_part_cached(block_id, 100, 70_000) is None
    assert tier.get(block_id) == data
    assert tier.get_part(block_id, 100, 70_000) == data[100:70_000]
    damage(tier, block_id, data, PART_SIZE + 1)
    assert tier.get(block_id) is None


def test_a_block_pulled_for_random_reads_is_read_back_into_the_page_cache(
    tmp_path: Path,
) -> None:
    """put(direct=True, read_back=True), for a block random reads pulled whole: written
    past the page cache, then read back into it by the kernel (no CPU copy), so the
    loop serves its parts from memory, each read checked by its parts as ever."""
    tier = new_tier(tmp_path)
    block_id, data = os.urandom(16).hex(), os.urandom(4 * MiB)
    tier.put(block_id, data, direct=True, read_back=True)
    # Its last part: the whole file is read back, not just the start.
    last = (4 * MiB - PART_SIZE + 3, 4 * MiB)
    wait_until(lambda: tier.get_part_cached(block_id, *last) is not None, 20, "read back")
    assert tier.get_part_cached(block_id, *last) == data[last[0] :]
    assert tier.get_part_cached(block_id, 100, 70_000) == data[100:70_000]
    path = damage(tier, block_id, data, 2 * PART_SIZE + 1)
    assert tier.get_part_cached(block_id, 2 * PART_SIZE, 2 * PART_SIZE + 10) is None
    assert tier.get_part(block_id, 2 * PART_SIZE, 2 * PART_SIZE + 10) is None
    assert not path.exists()


def test_a_whole_read_checks_every_byte(tmp_path: Path) -> None:
    tier = new_tier(tmp_path)
    block_id, data = os.urandom(16).hex(), os.urandom(MiB + 3)
    tier.put(block_id, data)
    path = damage(tier, block_id, data, MiB)
    assert tier.get(block_id) is None
    assert not path.exists() and tier.used == 0


def test_files_of_the_earlier_layout_are_removed_not_served(tmp_path: Path) -> None:
    """The earlier layout (a file named by the block id alone: data, then its xxh64) is
    not indexed: its files are deleted at open and the blocks fetched again."""
    old = {os.urandom(16).hex(): os.urandom(n) for n in (5000, 2 * MiB)}
    for block_id, data in old.items():
        (tmp_path / block_id[:2]).mkdir(exist_ok=True)
        (tmp_path / block_id[:2] / block_id).write_bytes(data + xxhash.xxh64_digest(data))
    foreign = tmp_path / "ab" / "notes.txt"
    foreign.parent.mkdir(exist_ok=True)
    foreign.write_text("not a block")
    tier = new_tier(tmp_path)
    for block_id in old:
        assert tier.get(block_id) is None
        assert not (tmp_path / block_id[:2] / block_id).exists()
    assert foreign.exists() and tier.used == 0


def test_least_recently_used_blocks_leave_first_by_bytes(tmp_path: Path) -> None:
    tier = LocalTier(tmp_path, 3 * file_length(MiB))
    tier.open()
    blocks = {os.urandom(16).hex(): os.urandom(MiB) for _ in range(4)}
    first, second, third, fourth = blocks
    for block_id in (first, second, third):
        tier.put(block_id, blocks[block_id])
    assert tier.get(first) == blocks[first]  # now second is the least recently used
    tier.put(fourth, blocks[fourth])
    assert tier.get(second) is None
    assert not block_path(tier, second, blocks[second]).exists()
    for block_id in (first, third, fourth):
        assert tier.get(block_id) == blocks[block_id]
    assert tier.used == 3 * file_length(MiB)


def test_with_a_reserve_the_tier_gives_its_blocks_up_before_the_disk_fills(tmp_path: Path) -> None:
    """A write that would leave less than ``reserve`` of the filesystem free evicts the
    tier's least recently used blocks, and is skipped when that is not enough: the tier
    never takes what the machine's other users need."""
    tier = new_tier(tmp_path)
    kept = {os.urandom(16).hex(): os.urandom(MiB) for _ in range(3)}
    for block_id, data in kept.items():
        tier.put(block_id, data)
    assert tier.used == 3 * file_length(MiB)
    st = os.statvfs(tmp_path)
    tier.reserve = st.f_bavail / st.f_blocks + 0.01  # already short of it: nothing fits
    block_id, data = os.urandom(16).hex(), os.urandom(MiB)
    tier.put(block_id, data)
    assert tier.get(block_id) is None and tier.used == 0
    assert not any(block_path(tier, b, d).exists() for b, d in kept.items())
    tier.reserve = 0.01  # room again
    tier.put(block_id, data)
    assert tier.get(block_id) == data


def test_the_loops_mapped_reads_check_every_read_and_let_go_of_evicted_files(
    tmp_path: Path,
) -> None:
    """The event loop's reads go through a mapping of the block file: a part changed
    after a first good read is refused at the next read (checked every time, not once),
    and a block evicted from the tier is unmapped, so its disk space is given back."""
    tier = LocalTier(tmp_path, 2 * file_length(4 * MiB))
    tier.open()
    block_id, data = os.urandom(16).hex(), os.urandom(4 * MiB)
    tier.put(block_id, data)
    tier.get_part(block_id, 0, 4 * MiB)  # into the page cache
    assert tier.get_part_cached(block_id, 5, 4096) == data[5:4096]
    path = block_path(tier, block_id, data)
    assert str(path) in Path("/proc/self/maps").read_text()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[100] ^ 1]), 100)  # in place: the mapping sees it
    finally:
        os.close(fd)
    assert tier.get_part_cached(block_id, 5, 4096) is None
    assert tier.get_part_cached(block_id, PART_SIZE, PART_SIZE + 10) == data[PART_SIZE:][:10]
    for _ in range(2):  # two more blocks: the first is evicted
        other = os.urandom(16).hex()
        tier.put(other, os.urandom(4 * MiB))
    assert not path.exists()
    tier.get_part_cached(other, 0, 10)  # the loop's next read lets go of it
    assert str(path) not in Path("/proc/self/maps").read_text()
    tier.close()


def test_a_stream_through_a_file_version_is_remembered_across_opens(tmp_path: Path) -> None:
    """A stream recorded through a version of a file is remembered, in this tier and, once
    saved, in a tier opened later on the same directory (a new mount); another version of
    the file is not."""
    tier = new_tier(tmp_path)
    assert not tier.streamed("s3://b/k", "v1")
    assert tier.record_stream("s3://b/k", "v1") is True
    assert tier.record_stream("s3://b/k", "v1") is False  # known: nothing to save
    assert tier.streamed("s3://b/k", "v1")
    assert not tier.streamed("s3://b/k", "v2")
    tier.save_streams()
    tier.close()
    again = new_tier(tmp_path)
    assert again.streamed("s3://b/k", "v1")
    assert not again.streamed("s3://b/other", "v1")
    again.close()


def test_the_streams_remembered_are_bounded_and_a_damaged_record_is_dropped(
    tmp_path: Path, monkeypatch
) -> None:
    """At most STREAMS_KEPT file versions are remembered, the most recent; the file is
    compacted as it grows, and lines that are not keys are dropped when it is read."""
    monkeypatch.setattr(localtier, "STREAMS_KEPT", 4)
    tier = new_tier(tmp_path)
    for i in range(20):
        assert tier.record_stream(f"s3://b/{i}", "v1")
        tier.save_streams()
    lines = (tmp_path / STREAMS_NAME).read_text().splitlines()
    assert len(lines) <= 2 * 4 + 1
    tier.close()
    with (tmp_path / STREAMS_NAME).open("a") as fh:
        fh.write("not a key\n")
    again = new_tier(tmp_path)
    assert len((tmp_path / STREAMS_NAME).read_text().splitlines()) == 4
    assert [again.streamed(f"s3://b/{i}", "v1") for i in (19, 16, 15)] == [True, True, False]
    again.close()
