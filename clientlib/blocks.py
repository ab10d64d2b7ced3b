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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from clientlib.errors import BadRequest
from clientlib.urls import canonical_url, split_url

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


#: Longest ``src`` or ``ver`` a request may carry, and the largest object size taken.
MAX_FIELD = 2048
MAX_OBJECT_SIZE = 1 << 50


def _number(fields: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    """A field's value: ASCII digits only (``str.isdigit`` is true for "²" and "٣")."""
    raw = fields.get(name)
    if raw is None:
        raise BadRequest(f"query parameter {name!r} is required")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        raise BadRequest(f"query parameter {name!r} must be a non-negative integer in ASCII digits")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name!r}={value} is outside [{lo}, {hi}]")
    return value


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

    def fields(self) -> dict[str, str]:
        """The block's source as the node API's parameters (``src``, ``ver``, ``size``,
        ``bs``, ``i``; docs/http-api.md): what a node needs to fetch it on a miss."""
        return {
            "src": self.url,
            "ver": self.version,
            "size": str(self.size),
            "bs": str(self.block_size),
            "i": str(self.index),
        }

    def query(self) -> str:
        """:meth:`fields` as a URL query string (percent-encoded)."""
        return urlencode(self.fields())

    @classmethod
    def from_fields(
        cls, block_id: str, fields: Mapping[str, str], block_size: int | None = None
    ) -> BlockRef:
        """Rebuild the block a request names (:meth:`fields`) and check it hashes to
        ``block_id``.

        The check means a client cannot make a node store one object's bytes under
        another block's id: the id is derived from the source, never trusted on its own.
        The URL is made canonical first (:func:`canonical_url`), so the scope check, the
        id and the origin all see one spelling. ``block_size`` is the cluster's: a
        request for another is refused, so no request can make a node fetch or store
        blocks of a size of its choosing (the object's size is checked against the origin
        when it is read).
        """
        raw_url = fields.get("src", "")
        version = fields.get("ver", "")
        if not raw_url or not version:
            raise BadRequest("query parameters 'src' and 'ver' are required on a miss")
        if len(raw_url) > MAX_FIELD or len(version) > MAX_FIELD:
            raise BadRequest("query parameter too long")
        origin, key = split_url(raw_url)
        url = canonical_url(raw_url)
        size = _number(fields, "size", 1, MAX_OBJECT_SIZE)
        asked = check_block_size(_number(fields, "bs", 1, MAX_BLOCK_SIZE))
        if block_size is not None and asked != block_size:
            raise BadRequest(
                f"block size {asked} is not the cluster's {block_size}: re-read the cluster config"
            )
        index = _number(fields, "i", 0, size // asked)
        ref = cls(url, origin, key, version, size, asked, index)
        if ref.offset >= size:
            raise BadRequest(f"block {index} is past the end of a {size}-byte object")
        if ref.id != block_id:
            raise BadRequest(f"block id {block_id} does not match its source parameters")
        return ref


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
