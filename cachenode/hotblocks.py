"""Which blocks are hot right now, counted by both hit paths.

A block is hot, and its readers are told to spread over its replicas
(``X-Ringcache-Hot: 1``, see :mod:`clientlib.client`), when it has
:data:`HOT_CONCURRENCY` GETs in flight at once, or :data:`HOT_REQUESTS` within one
:data:`HOT_WINDOW`. The rate matters where sends are fast (loopback, small blocks): many
readers of one block may rarely overlap, yet one node would serve them all.
"""

from __future__ import annotations

import time

__all__ = ["HOT_CONCURRENCY", "HOT_REQUESTS", "HOT_WINDOW", "HotBlocks"]

HOT_CONCURRENCY = 4
HOT_REQUESTS = 16
#: Seconds.
HOT_WINDOW = 1.0


class HotBlocks:
    """Block GETs in flight, and GETs in the current window, by block id."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}
        self._recent: dict[str, int] = {}
        self._window_start = time.monotonic()

    def begin(self, block_id: str) -> bool:
        """Count a GET of ``block_id`` in; whether the block is hot."""
        hot = self.hit(block_id, time.monotonic())
        self._active[block_id] = self._active.get(block_id, 0) + 1
        return hot

    def hit(self, block_id: str, now: float) -> bool:
        """Count a GET of ``block_id`` that begins and ends at ``now`` (monotonic), within
        one call, so that nothing can see it in flight (the fast path's small hits: no
        :meth:`end` to pair); whether the block is hot, this GET counted as in flight.

        The window's counts are dropped as a whole when it ends, so they cost one dict
        entry per block asked for within the last window, and nothing per request later.
        """
        if now - self._window_start >= HOT_WINDOW:
            self._recent.clear()
            self._window_start = now
        recent = self._recent[block_id] = self._recent.get(block_id, 0) + 1
        return recent >= HOT_REQUESTS or self._active.get(block_id, 0) + 1 >= HOT_CONCURRENCY

    def end(self, block_id: str) -> None:
        """Count a GET of ``block_id`` out (answered, failed or given up)."""
        if self._active[block_id] == 1:
            del self._active[block_id]
        else:
            self._active[block_id] -= 1
