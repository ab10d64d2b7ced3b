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
    StreamedBlockWrite,
    block_checksum,
    block_filename,
    file_length,
    open_cached,
    open_if_cached,
    open_or_read,
    open_verified,
    parse_name,
    parse_names,
    read_direct,
    read_part,
    read_verified,
    resident,
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


def _dropped(tmp_path: Path, data: bytes) -> tuple[str, int]:
    """A block file written past the page cache, none of it cached."""
    path, checksum = str(tmp_path / "block"), block_checksum(data)
    write_block(str(tmp_path / "tmp"), path, data, direct=True)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the trailer was buffered
    os.close(fd)
    return path, checksum


def _resident(path: str, start: int, stop: int) -> bool | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident(fd, start, stop)
    finally:
        os.close(fd)


def test_resident_tells_whether_every_page_of_a_range_is_in_the_page_cache(tmp_path):
    data = os.urandom(4 << 20)
    path, _ = _dropped(tmp_path, data)
    assert _resident(path, 0, len(data)) is False
    with open(path, "rb") as f:
        f.seek(PART_SIZE)
        f.read(PART_SIZE)
    assert _resident(path, PART_SIZE + 1, 2 * PART_SIZE - 1) is True
    assert _resident(path, 0, len(data)) is False
    Path(path).read_bytes()
    assert _resident(path, 0, file_length(len(data))) is True


def test_probes_of_a_block_out_of_the_page_cache_read_none_of_it(tmp_path):
    """The event loop's checks (whole block, or a range's parts) answer "not now" for a
    block on the disk without starting a read of it: a RWF_NOWAIT read would have started
    the kernel's read-ahead of the file into the page cache."""
    data = os.urandom(4 << 20)
    path, checksum = _dropped(tmp_path, data)
    assert open_cached(path, len(data), checksum, bytearray(len(data))) is None
    assert read_part(path, len(data), (10, PART_SIZE + 10), nowait=True) is None
    assert _resident(path, 0, file_length(len(data))) is False
    Path(path).read_bytes()
    opened = open_cached(path, len(data), checksum, buf := bytearray(len(data)))
    assert isinstance(opened, BlockFile) and buf == data
    opened.close()
    assert (
        read_part(path, len(data), (10, PART_SIZE + 10), nowait=True) == data[10 : PART_SIZE + 10]
    )


def test_probes_open_only_a_block_whose_name_the_kernel_holds(tmp_path):
    """The event loop's checks answer "not now" for a block file whose directory entry or
    inode the kernel has forgotten (a plain open would wait for the disk to read them, on
    the event loop), and do not look the name up themselves; a thread's open, which may
    wait, brings it back."""
    data = os.urandom(3 * PART_SIZE + 11)
    path, checksum = written(tmp_path, data)
    fd = open_if_cached(path)
    assert fd is not None and os.pread(fd, 10, 0) == data[:10]
    os.close(fd)
    Path("/proc/sys/vm/drop_caches").write_text("2")  # dentries and inodes
    assert open_if_cached(path) is None
    assert open_cached(path, len(data), checksum, bytearray(len(data))) is None
    assert read_part(path, len(data), (10, PART_SIZE + 10), nowait=True) is None
    assert open_if_cached(path) is None  # still forgotten: nothing above read it back
    assert read_part(path, len(data), (10, PART_SIZE + 10)) == data[10 : PART_SIZE + 10]
    Path(path).read_bytes()
    opened = open_cached(path, len(data), checksum, buf := bytearray(len(data)))
    assert isinstance(opened, BlockFile) and buf == data
    opened.close()
    assert open_if_cached(str(tmp_path / "absent")) is None


def test_open_or_read_sends_a_cached_block_from_its_file_and_reads_the_rest_past_the_cache(
    tmp_path,
):
    data = os.urandom(3 * PART_SIZE + 11)
    path, checksum = _dropped(tmp_path, data)
    got = open_or_read(path, len(data), checksum)
    assert isinstance(got, memoryview) and got == data
    assert _resident(path, 0, len(data)) is False
    Path(path).read_bytes()
    opened = open_or_read(path, len(data), checksum)
    assert isinstance(opened, BlockFile) and os.pread(opened.fd, len(data), 0) == data
    opened.close()
    with open(path, "r+b") as f:  # its first page is cached now, the rest is not
        f.write(bytes([data[0] ^ 1]))
        f.flush()
        os.fsync(f.fileno())
    bad = open_or_read(path, len(data), checksum)
    assert isinstance(bad, BadBlockFile) and bad.reason == "checksum mismatch"


def test_a_streamed_write_writes_as_the_bytes_come_and_ends_as_write_block(tmp_path: Path):
    nbytes = 4 * 1024 * 1024 + 123  # an object's tail: not a multiple of the alignment
    data = os.urandom(nbytes)
    buf = memoryview(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE))
    streamed = StreamedBlockWrite(str(tmp_path / "tmp"), buf)
    buf[: 3 * 2**20] = data[: 3 * 2**20]
    streamed.advance(2**20 + 5)
    assert (tmp_path / "tmp").stat().st_size == 2**20  # written before the rest came
    streamed.advance(3 * 2**20)
    assert (tmp_path / "tmp").stat().st_size == 3 * 2**20
    buf[3 * 2**20 :] = data[3 * 2**20 :]
    streamed.finish(str(tmp_path / "final"))
    write_block(str(tmp_path / "tmp2"), str(tmp_path / "whole"), data)
    assert (tmp_path / "final").read_bytes() == (tmp_path / "whole").read_bytes()
    assert not (tmp_path / "tmp").exists()


def test_an_aborted_streamed_write_leaves_no_file(tmp_path: Path):
    buf = memoryview(mmap.mmap(-1, 4 * 2**20, flags=mmap.MAP_PRIVATE))
    streamed = StreamedBlockWrite(str(tmp_path / "tmp"), buf)
    streamed.advance(2 * 2**20)
    assert (tmp_path / "tmp").exists()
    streamed.abort()
    assert os.listdir(tmp_path) == []
