"""The memory tier of a node's store: hot small blocks' bytes, kept after a verified read.

Serving a hot small block from memory saves the open, read and close that are most of a
small hit's cost (``loadtest/bench_hot_blocks.py`` measures it). The tier holds copies
only: the store asks it after its index lookup, so an evicted block is never served from
here, and each entry is hashed again against the index's checksum on every serve, the
same promise as for a file. Least recently used entries leave first, by bytes.
"""

from __future__ import annotations

from cachetools import LRUCache

from clientlib.blockfile import block_checksum

__all__ = ["MemoryTier"]


class MemoryTier:
    """Verified copies of small blocks, at most ``capacity`` bytes of them (LRU).

    Used on the event loop thread only.
    """

    def __init__(self, capacity: int) -> None:
        self._blocks: LRUCache[str, tuple[int, bytes]] = LRUCache(
            max(capacity, 1), getsizeof=lambda entry: len(entry[1])
        )

    def get(self, block_id: str, checksum: int) -> bytes | None:
        """The block's bytes if they are here and match ``checksum`` (the index's)."""
        entry = self._blocks.get(block_id)
        if entry is None:
            return None
        if entry[0] == checksum and block_checksum(entry[1]) == checksum:
            return entry[1]
        del self._blocks[block_id]  # another version of the block, or bad memory
        return None

    def keep(self, block_id: str, checksum: int, data: bytes | bytearray | memoryview) -> bytes:
        """Keep bytes just verified against ``checksum`` (if they fit); return them as bytes."""
        data = bytes(data)
        if len(data) < self._blocks.maxsize:
            self._blocks[block_id] = (checksum, data)
        return data
