"""The on-disk local tier of one compute node (``mountd --local-cache PATH:SIZE``).

Whole blocks, one file each, named by block id under ``PATH/<2 hex>/<id>``. Because a
block id includes the object's version, a file here can never be stale, only evicted.
A file is the block's data, its part checksums (:mod:`clientlib.parts`) and the xxh64 of
the data; a block that fails a check is deleted and read again from the peers, never
served. A random read takes only the parts that hold its bytes (measured: with whole
blocks read for each 64 KiB read, a mount read its local disk slower than it asked a
node for the range). Writes go to a temporary name and are renamed into
place, so a crash leaves whole blocks or nothing. Eviction is LRU by bytes, with the
index rebuilt from the directory (oldest access time first) at start.

The methods are blocking (disk I/O) and thread-safe; mountd calls them on a small
thread pool so the FUSE loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import xxhash

from clientlib.blocks import check_block_id
from clientlib.errors import BadRequest
from clientlib.parts import data_length, part_trailer, read_parts

__all__ = ["LocalTier"]

log = logging.getLogger(__name__)

_DIGEST = 8


class LocalTier:
    """An LRU block cache of at most ``capacity`` bytes in the directory ``root``."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.used = 0
        self._index: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the directory, drop leftovers of interrupted writes, index the blocks."""
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for path in self.root.glob("*/*"):
            if path.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                st = path.stat()
                check_block_id(path.name)
            except (OSError, BadRequest):  # a foreign file: not ours to index
                continue
            found.append((st.st_atime, path.name, st.st_size))
        for _, block_id, size in sorted(found):
            self._index[block_id] = size
            self.used += size
        self._evict()
        log.info(
            "local tier %s: %d blocks, %d of %d bytes",
            self.root,
            len(self._index),
            self.used,
            self.capacity,
        )

    def _path(self, block_id: str) -> Path:
        return self.root / block_id[:2] / block_id

    def _used(self, block_id: str) -> Path | None:
        """The block's file if it is indexed, which makes it the most recently used."""
        with self._lock:
            if block_id not in self._index:
                return None
            self._index.move_to_end(block_id)
        return self._path(block_id)

    def get(self, block_id: str) -> bytes | None:
        """The block's bytes if they are here and whole, else None."""
        path = self._used(block_id)
        if path is None:
            return None
        try:
            raw = path.read_bytes()
        except OSError:
            self._forget(block_id)
            return None
        nbytes = data_length(len(raw) - _DIGEST)
        data = raw[:nbytes] if nbytes is not None else b""
        if nbytes is None or xxhash.xxh64_digest(data) != raw[-_DIGEST:]:
            self._drop(block_id, path)
            return None
        return data

    def get_part(self, block_id: str, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of the block if it is here and they check out: read
        and checked by the parts that hold them, or with the whole block (:meth:`get`)
        when it has a single part or a part does not match."""
        path = self._used(block_id)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._forget(block_id)
            return None
        try:
            nbytes = data_length(os.fstat(fd).st_size - _DIGEST)
            piece = None if nbytes is None else read_parts(fd, nbytes, start, stop)
        except OSError:
            piece = None
        finally:
            os.close(fd)
        if piece is not None:
            return bytes(piece)
        data = self.get(block_id)
        return None if data is None else data[start:stop]

    def _drop(self, block_id: str, path: Path) -> None:
        log.warning("local tier: block %s at %s fails its checksum; dropped", block_id, path)
        self._forget(block_id)
        with contextlib.suppress(OSError):
            path.unlink()

    def put(self, block_id: str, data: bytes) -> None:
        """Store a block (atomically); evicts the least recently used to make room."""
        trailer = part_trailer(data)
        size = len(data) + len(trailer) + _DIGEST
        if size > self.capacity:
            return
        with self._lock:
            if block_id in self._index:
                self._index.move_to_end(block_id)
                return
        path = self._path(block_id)
        tmp = path.with_name(f"{block_id}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.write(trailer)
                fh.write(xxhash.xxh64_digest(data))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("local tier: cannot store block %s in %s: %s", block_id, self.root, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        with self._lock:
            self._index[block_id] = size
            self.used += size
        self._evict()

    def _forget(self, block_id: str) -> None:
        with self._lock:
            size = self._index.pop(block_id, None)
            if size is not None:
                self.used -= size

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self.used <= self.capacity or not self._index:
                    return
                block_id, size = self._index.popitem(last=False)
                self.used -= size
            with contextlib.suppress(OSError):
                self._path(block_id).unlink()
