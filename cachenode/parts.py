"""Per-part checksums of a block file, so a byte range can be verified without the rest.

A random reader (a Parquet column chunk, a seek into an index) asks a node for a range of
a block, and the node promises never to send a wrong byte. With only the whole-block
checksum of the file name, a 64 KiB range of a 4 MiB block cost a 4 MiB read and hash,
and from a cold disk that read was most of the request's time. So a block file larger
than one part ends with a trailer: the xxh3-64 of each :data:`PART_SIZE` part of the data,
8 big-endian bytes each (128 bytes for 4 MiB, not counted in a cache dir's size). A
range is served once the parts it touches match the trailer.

The trailer is not trusted beyond that: when a part does not match, the caller checks
the whole block against the checksum in the file name, which decides. A file without a
trailer (written before it existed) is checked whole, as before.
"""

from __future__ import annotations

import os

import xxhash

__all__ = ["PART_SIZE", "part_trailer", "parts_match", "trailer_length"]

#: Bytes a part. The kernel asks a FUSE mount for 128 KiB to 1 MiB at a time; 256 KiB
#: parts keep the over-read of a 64 KiB range small while a 4 MiB block's trailer is
#: 128 bytes.
PART_SIZE = 256 * 1024

_DIGEST = 8


def trailer_length(nbytes: int) -> int:
    """Bytes of the trailer of a block of ``nbytes``: none for a block of one part."""
    if nbytes <= PART_SIZE:
        return 0
    return _DIGEST * -(-nbytes // PART_SIZE)


def part_trailer(data: bytes | bytearray | memoryview) -> bytes:
    """The trailer to write after ``data``."""
    if len(data) <= PART_SIZE:
        return b""
    view = memoryview(data)
    return b"".join(
        xxhash.xxh3_64_digest(view[start : start + PART_SIZE])
        for start in range(0, len(view), PART_SIZE)
    )


def parts_match(fd: int, nbytes: int, start: int, stop: int) -> bool:
    """Whether the parts of the block in ``fd`` that hold bytes ``[start, stop)`` match
    the file's trailer. False (not an error) for a file without one, a short read or a
    mismatch: the caller then checks the whole block."""
    if not trailer_length(nbytes) or not 0 <= start < stop <= nbytes:
        return False
    first, last = start // PART_SIZE, (stop - 1) // PART_SIZE
    want = os.pread(fd, _DIGEST * (last - first + 1), nbytes + _DIGEST * first)
    begin, end = first * PART_SIZE, min(nbytes, (last + 1) * PART_SIZE)
    data = os.pread(fd, end - begin, begin)
    if len(want) != _DIGEST * (last - first + 1) or len(data) != end - begin:
        return False
    view = memoryview(data)
    return all(
        xxhash.xxh3_64_digest(view[i * PART_SIZE : (i + 1) * PART_SIZE])
        == want[i * _DIGEST : (i + 1) * _DIGEST]
        for i in range(last - first + 1)
    )
