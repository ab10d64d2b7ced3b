"""Per-part checksums of a block file, so a byte range can be verified without the rest.

A random reader (a Parquet column chunk, a seek into an index) wants a range of a block,
and neither a cache node nor the mount's local disk tier may hand out a wrong byte. With
only a whole-block checksum, a 64 KiB range of a 4 MiB block cost a 4 MiB read and hash,
and from a cold disk that read was most of the request's time. So a block file larger
than one part has a trailer right after the data: the xxh3-64 of each :data:`PART_SIZE`
part, 8 big-endian bytes each (128 bytes for 4 MiB, not counted in a cache's size). A
range is served once the parts it touches match the trailer.

The trailer is not trusted beyond that: when a part does not match, the caller checks
the whole block against its whole-block checksum, which decides. Used by the node's
block store (:mod:`cachenode.store`) and the mount's local tier (:mod:`mountd.localtier`).
"""

from __future__ import annotations

import os

import xxhash

__all__ = ["PART_SIZE", "data_length", "part_trailer", "read_parts", "trailer_length"]

#: Bytes a part. A random 64 KiB read through the mount reaches the node as a 68 KiB
#: range (measured); 256 KiB parts keep the over-read of such a range to one or two parts
#: while a 4 MiB block's trailer is 128 bytes. With them, random 64 KiB reads through
#: the mount went from 349 to 654 a second (loadtest/results/mount.md, run 7).
PART_SIZE = 256 * 1024

_DIGEST = 8


def trailer_length(nbytes: int) -> int:
    """Bytes of the trailer of a block of ``nbytes``: none for a block of one part."""
    if nbytes <= PART_SIZE:
        return 0
    return _DIGEST * -(-nbytes // PART_SIZE)


def data_length(with_trailer: int) -> int | None:
    """The data length of a file region of ``with_trailer`` bytes holding data and its
    trailer, for a file whose name does not say (the mount's local tier); None if no
    data length gives that size. ``n + trailer_length(n)`` grows with ``n``, so at most
    one does."""
    if with_trailer <= PART_SIZE:
        return max(with_trailer, 0)
    parts = -(-with_trailer // (PART_SIZE + _DIGEST))
    for count in (parts - 1, parts, parts + 1):
        nbytes = with_trailer - _DIGEST * count
        if nbytes > 0 and nbytes + trailer_length(nbytes) == with_trailer:
            return nbytes
    return None


def part_trailer(data: bytes | bytearray | memoryview) -> bytes:
    """The trailer to write after ``data``."""
    if len(data) <= PART_SIZE:
        return b""
    view = memoryview(data)
    return b"".join(
        xxhash.xxh3_64_digest(view[start : start + PART_SIZE])
        for start in range(0, len(view), PART_SIZE)
    )


def read_parts(
    fd: int, nbytes: int, start: int, stop: int, *, nowait: bool = False
) -> memoryview | None:
    """Bytes ``[start, stop)`` of the block in ``fd`` if the parts that hold them match
    the file's trailer; None (not an error) for a file without one, a short read or a
    mismatch, and the caller then checks the whole block. With ``nowait`` the reads use
    ``RWF_NOWAIT`` and None also means "not all in the page cache": the event loop can
    serve a cached range inline, without a hop to a thread."""
    if not trailer_length(nbytes) or not 0 <= start < stop <= nbytes:
        return None
    first, last = start // PART_SIZE, (stop - 1) // PART_SIZE
    begin, end = first * PART_SIZE, min(nbytes, (last + 1) * PART_SIZE)
    want = bytearray(_DIGEST * (last - first + 1))
    data = bytearray(end - begin)
    flags = os.RWF_NOWAIT if nowait else 0
    try:
        whole = os.preadv(fd, (want,), nbytes + _DIGEST * first, flags) == len(want)
        whole = whole and os.preadv(fd, (data,), begin, flags) == len(data)
    except BlockingIOError:  # RWF_NOWAIT: some of it is on the disk
        return None
    if not whole:
        return None
    view = memoryview(data)
    for i in range(last - first + 1):
        part = view[i * PART_SIZE : (i + 1) * PART_SIZE]
        if xxhash.xxh3_64_digest(part) != want[i * _DIGEST : (i + 1) * _DIGEST]:
            return None
    return view[start - begin : stop - begin]
