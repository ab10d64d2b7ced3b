"""The block file format on its own: names, trailer, verified reads of a written file."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from clientlib.blockfile import (
    DIRECT_ALIGN,
    PART_SIZE,
    BadBlockFile,
    BlockFile,
    block_checksum,
    block_filename,
    file_length,
    open_verified,
    parse_name,
    parse_names,
    read_direct,
    read_part,
    read_verified,
    write_block,
)


def written(tmp_path: Path, data: bytes) -> tuple[str, int]:
    block_id = os.urandom(16).hex()
    path = str(tmp_path / block_filename(block_id, len(data), block_checksum(data)))
    write_block(str(tmp_path / "tmp"), path, data)
    return path, block_checksum(data)


def test_a_listing_decodes_as_each_name_does_and_odd_names_are_refused() -> None:
    ids = ["ab" + os.urandom(15).hex() for _ in range(5)]
    names = [block_filename(i, n, n * 7919).encode() for n, i in enumerate(ids)]
    keys, nbytes, checksums = parse_names(b"ab", names)
    for key, size, checksum, name in zip(keys, nbytes, checksums, names, strict=True):
        assert parse_name(name) == (f"{key:032x}", size, checksum)
    assert parse_names(b"cd", names) is None  # another shard's prefix
    assert parse_names(b"ab", [*names, b"x.tmp"]) is None
    assert parse_name(names[0] + b".tmp") is None


def test_a_written_block_reads_back_whole_and_by_parts(tmp_path: Path) -> None:
    data = os.urandom(3 * PART_SIZE + 11)
    path, checksum = written(tmp_path, data)
    assert os.path.getsize(path) == file_length(len(data))
    assert not (tmp_path / "tmp").exists()
    assert read_verified(path, len(data), checksum) == data
    part = (PART_SIZE - 5, 2 * PART_SIZE + 5)
    assert read_part(path, len(data), part) == data[part[0] : part[1]]
    opened = open_verified(path, len(data), checksum, part)
    assert isinstance(opened, BlockFile)
    opened.close()


def test_a_damaged_part_fails_its_range_and_the_whole_block(tmp_path: Path) -> None:
    data = os.urandom(2 * PART_SIZE + 1)
    path, checksum = written(tmp_path, data)
    with open(path, "r+b") as f:
        f.seek(PART_SIZE + 3)
        f.write(bytes([data[PART_SIZE + 3] ^ 1]))
    assert read_part(path, len(data), (10, 20)) == data[10:20]  # part 0 is whole
    assert read_part(path, len(data), (PART_SIZE, PART_SIZE + 9)) is None
    bad = read_verified(path, len(data), checksum)
    assert isinstance(bad, BadBlockFile) and bad.inode is not None
    assert isinstance(open_verified(path, len(data), checksum), BadBlockFile)


@pytest.mark.parametrize("nbytes", [0, 100, DIRECT_ALIGN, DIRECT_ALIGN + 1, PART_SIZE + 5, 4 << 20])
@pytest.mark.parametrize("source", ["bytes", "aligned buffer", "unaligned buffer"])
def test_a_direct_write_makes_the_same_file_as_a_buffered_one(tmp_path, nbytes, source):
    data = os.urandom(nbytes)
    buf = mmap.mmap(-1, nbytes + DIRECT_ALIGN + 1, flags=mmap.MAP_PRIVATE)
    view = memoryview(buf)
    if source == "bytes":
        given: bytes | memoryview = data
    else:  # from the buffer itself, or from a copy where the buffer is not aligned
        start = 0 if source == "aligned buffer" else 1
        given = view[start : start + nbytes]
        given[:] = data
    buffered, direct = str(tmp_path / "buffered"), str(tmp_path / "direct")
    write_block(str(tmp_path / "tmp1"), buffered, data)
    write_block(str(tmp_path / "tmp2"), direct, given, direct=True)
    assert Path(direct).read_bytes() == Path(buffered).read_bytes()
    assert os.path.getsize(direct) == file_length(nbytes)
    assert read_verified(direct, nbytes, block_checksum(data)) == data
    assert sorted(os.listdir(tmp_path)) == ["buffered", "direct"]
    given = b""
    view.release()


def test_a_direct_write_leaves_the_block_out_of_the_page_cache(tmp_path):
    data = os.urandom(4 << 20)
    path = str(tmp_path / "direct")
    write_block(str(tmp_path / "tmp"), path, data, direct=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):  # RWF_NOWAIT: not in the page cache
            os.preadv(fd, [bytearray(DIRECT_ALIGN)], 0, os.RWF_NOWAIT)
    finally:
        os.close(fd)
    assert read_verified(path, len(data), block_checksum(data)) == data


def _cached(path: str) -> bool:
    """Whether the first page of the file is in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(DIRECT_ALIGN)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("nbytes", [1, DIRECT_ALIGN + 1, 3 * PART_SIZE + 11, 4 << 20])
@pytest.mark.parametrize("cached", [False, True])
def test_a_direct_read_is_the_block_and_stays_out_of_the_page_cache(tmp_path, nbytes, cached):
    """An unaligned length and the trailer after the block come back as the block's own
    bytes, whether the page cache holds the file (then read from the disk all the same)
    or not (then it still does not)."""
    data = os.urandom(nbytes)
    path = str(tmp_path / "block")
    write_block(str(tmp_path / "tmp"), path, data, direct=True)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # a small block's tail was buffered
    os.close(fd)
    if cached:
        Path(path).read_bytes()
    got = read_direct(path, nbytes, block_checksum(data))
    assert isinstance(got, memoryview) and got == data
    if nbytes > DIRECT_ALIGN:  # (a file of a few bytes may live in its inode)
        assert _cached(path) == cached


def test_a_direct_read_of_a_damaged_or_short_file_is_refused(tmp_path):
    data = os.urandom(2 * PART_SIZE + 1)
    path, checksum = written(tmp_path, data)
    with open(path, "r+b") as f:
        f.seek(PART_SIZE + 3)
        f.write(bytes([data[PART_SIZE + 3] ^ 1]))
    bad = read_direct(path, len(data), checksum)
    assert isinstance(bad, BadBlockFile) and bad.reason == "checksum mismatch"
    assert bad.inode == os.stat(path).st_ino
    os.truncate(path, PART_SIZE)
    short = read_direct(path, len(data), checksum)
    assert isinstance(short, BadBlockFile) and short.inode is not None
    missing = read_direct(str(tmp_path / "gone"), len(data), checksum)
    assert isinstance(missing, BadBlockFile) and missing.inode is None
