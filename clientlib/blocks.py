"""Block ids and the mapping of byte ranges to blocks.

A block is a fixed-size slice of one object *version*: index ``i`` covers bytes
``[i*B, min((i+1)*B, size))``. Its id is a hash of (origin, key, version tag, block size,
index), so a changed object gets new ids and old blocks can never be served for it. The id
places the block on the ring and names its file on disk, so it must be identical on every
client and node: the encoding below is part of the wire contract (see docs/http-api.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from clientlib.errors import BadRequest

__all__ = [
    "BLOCK_ID_RE",
    "DEFAULT_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "BlockRef",
    "BlockSlice",
    "block_id",
    "block_length",
    "block_refs",
    "check_block_id",
    "check_block_size",
    "slices_for_range",
]

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 64 * 1024 * 1024

#: 32 lowercase hex digits: a 128-bit BLAKE2b digest.
BLOCK_ID_RE = re.compile(r"[0-9a-f]{32}")


def block_id(origin: str, key: str, version: str, block_size: int, index: int) -> str:
    """Return the id of block ``index`` of ``origin``/``key`` at ``version``.

    The fields are joined with NUL (which none of them may contain) and hashed with
    BLAKE2b-128: collision-free in practice, fast, and in the standard library.
    """
    for field in (origin, key, version):
        if "\0" in field:
            raise BadRequest("NUL byte in an origin, key or version")
    material = "\0".join((origin, key, version, str(block_size), str(index)))
    return hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


def check_block_id(value: str) -> str:
    """Return ``value`` if it is a well-formed block id, else raise :class:`BadRequest`."""
    if not BLOCK_ID_RE.fullmatch(value):
        raise BadRequest(f"malformed block id {value[:80]!r}: want 32 lowercase hex digits")
    return value


def check_block_size(value: int) -> int:
    """Validate a cluster block size: a power of two between 64 KiB and 64 MiB."""
    if not (MIN_BLOCK_SIZE <= value <= MAX_BLOCK_SIZE) or value & (value - 1):
        raise BadRequest(
            f"block size {value} must be a power of two between {MIN_BLOCK_SIZE} "
            f"and {MAX_BLOCK_SIZE}"
        )
    return value


def block_length(size: int, block_size: int, index: int) -> int:
    """Length in bytes of block ``index`` of an object of ``size`` bytes."""
    start = index * block_size
    if index < 0 or start >= size:
        raise BadRequest(f"block index {index} is outside an object of {size} bytes")
    return min(block_size, size - start)


@dataclass(frozen=True, slots=True)
class BlockRef:
    """Everything a node needs to fetch one block from the origin on a miss."""

    url: str
    origin: str
    key: str
    version: str
    size: int
    block_size: int
    index: int

    @property
    def id(self) -> str:
        return block_id(self.origin, self.key, self.version, self.block_size, self.index)

    @property
    def offset(self) -> int:
        return self.index * self.block_size

    @property
    def length(self) -> int:
        return block_length(self.size, self.block_size, self.index)


@dataclass(frozen=True, slots=True)
class BlockSlice:
    """The part ``[start, stop)`` of block ``index`` that a byte-range read needs."""

    index: int
    start: int
    stop: int


def slices_for_range(size: int, block_size: int, offset: int, length: int) -> list[BlockSlice]:
    """Split the read ``[offset, offset+length)`` of an object into per-block slices.

    Reads past the end are clipped, as POSIX ``read`` does; a negative offset or length
    is a :class:`BadRequest`.
    """
    if offset < 0 or length < 0:
        raise BadRequest(f"negative offset {offset} or length {length}")
    end = min(size, offset + length)
    out: list[BlockSlice] = []
    pos = offset
    while pos < end:
        index = pos // block_size
        block_start = index * block_size
        stop = min(end, block_start + block_size)
        out.append(BlockSlice(index, pos - block_start, stop - block_start))
        pos = stop
    return out


def block_refs(
    url: str, origin: str, key: str, version: str, size: int, block_size: int
) -> Iterator[BlockRef]:
    """All blocks of one object version, in order (warmup and fill-on-write use this)."""
    count = (size + block_size - 1) // block_size
    for index in range(count):
        yield BlockRef(url, origin, key, version, size, block_size, index)
