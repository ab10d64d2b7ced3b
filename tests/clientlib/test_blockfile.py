"""The block file format on its own: names, trailer, verified reads of a written file."""

from __future__ import annotations

import os
from pathlib import Path

from clientlib.blockfile import (
    PART_SIZE,
    BadBlockFile,
    BlockFile,
    block_checksum,
    block_filename,
    file_length,
    open_verified,
    parse_name,
    parse_names,
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
