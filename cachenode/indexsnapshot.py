"""The index snapshot: a cache dir's index saved at a clean shutdown, for a fast restart.

Rebuilding the index from directory listings costs a ``getdents`` and a Python object
per file name. A node that stops cleanly knows its index exactly, so closing a cache dir
(:meth:`cachenode.cachedir.CacheDir.save_snapshot`) writes it to ``<dir>/index.snapshot``
(32 bytes per block, four 64-bit columns) and the next open of the dir loads it with a
few array copies instead of listing the shards, as CacheLib's warm restart does.

The snapshot is trusted only if nothing can have changed since it was written:

- it is read once and deleted before the dir is used, so a node that later crashes
  restarts with a full scan, never with an index older than its files;
- each shard directory's mtime is recorded, and a shard whose mtime differs (a file
  added or removed while the node was down) discards the whole snapshot, as does one
  whose mtime is not older than the snapshot's own (see :func:`_check`);
- the payload carries an xxh3-64 checksum, so a torn or damaged file is refused.

Anything odd is logged and answered with None: the caller scans, which is always right.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import operator
import os
import struct
import sys
from array import array
from collections.abc import Sequence

import xxhash

__all__ = ["SNAPSHOT_NAME", "load", "save"]

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "index.snapshot"
_MAGIC = b"ringcache-index\x01"  # the last byte is the format version
_HEADER = struct.Struct("<16sQQ")  # magic, entry count, xxh3-64 of everything after


def _le_bytes(column: array) -> bytes:
    """A column of 64-bit ints as little-endian bytes, whatever this machine's order."""
    if sys.byteorder != "little":
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def _shard_mtimes(shard_paths: Sequence[str]) -> array:
    return array("q", (os.stat(p).st_mtime_ns for p in shard_paths))


def save(
    root: str,
    shard_paths: Sequence[str],
    keys: Sequence[int],
    nbytes: Sequence[int],
    tags: Sequence[int],
) -> None:
    """Write the index of the dir at ``root`` (128-bit int keys) atomically; raises OSError."""
    count = len(keys)
    mask = (1 << 64) - 1
    hi = array("Q", (k >> 64 for k in keys))
    lo = array("Q", (k & mask for k in keys))
    columns = [_shard_mtimes(shard_paths), hi, lo, array("Q", nbytes), array("Q", tags)]
    payload = b"".join(map(_le_bytes, columns))
    header = _HEADER.pack(_MAGIC, count, xxhash.xxh3_64_intdigest(payload))
    path = os.path.join(root, SNAPSHOT_NAME)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(root: str, shard_paths: Sequence[str]) -> tuple[list[int], array, array] | None:
    """The saved index of the dir at ``root`` as (keys, nbytes, tags) columns, or None.

    The snapshot file is deleted whatever the outcome (see the module docstring).
    """
    path = os.path.join(root, SNAPSHOT_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
            written = os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cache dir %s: cannot read the index snapshot: %s; scanning", root, exc)
        return None
    finally:
        for leftover in (path, f"{path}.tmp"):
            with contextlib.suppress(OSError):  # gone, or a read-only dir: nothing changes
                os.unlink(leftover)
    reason = _check(raw, written, shard_paths)
    if reason:
        log.warning("cache dir %s: index snapshot not used (%s); scanning", root, reason)
        return None
    count = _HEADER.unpack_from(raw)[1]
    words = array("Q")
    words.frombytes(raw[_HEADER.size + 8 * len(shard_paths) :])
    if sys.byteorder != "little":
        words.byteswap()
    hi, lo = words[:count], words[count : 2 * count]
    keys = list(map(operator.or_, map(operator.lshift, hi, itertools.repeat(64)), lo))
    return keys, words[2 * count : 3 * count], words[3 * count :]


def _check(raw: bytes, written: int, shard_paths: Sequence[str]) -> str:
    """Why the snapshot (written at ``written``, its mtime) cannot be used, or "" if it can.

    File times come from a coarse clock (a few ms): a shard changed in the same tick as the
    snapshot was written could be changed again in that tick without its mtime moving. So
    every shard must also be older than the snapshot, which puts any later change in a
    later tick, where it shows.
    """
    if len(raw) < _HEADER.size:
        return "truncated"
    magic, count, checksum = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        return "not a snapshot of this format"
    if len(raw) != _HEADER.size + 8 * len(shard_paths) + 32 * count:
        return "wrong length"
    if xxhash.xxh3_64_intdigest(memoryview(raw)[_HEADER.size :]) != checksum:
        return "checksum mismatch"
    saved = array("q")
    saved.frombytes(raw[_HEADER.size : _HEADER.size + 8 * len(shard_paths)])
    if sys.byteorder != "little":
        saved.byteswap()
    if max(saved, default=0) >= written:
        return "a shard changed in the tick it was written"
    try:
        if saved != _shard_mtimes(shard_paths):
            return "blocks were added or removed since it was written"
    except OSError as exc:
        return f"cannot stat a shard: {exc}"
    return ""
