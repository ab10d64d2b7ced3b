"""The origin shield: this node's share of what the whole cluster may ask of the origin.

Object stores cap a whole account's bandwidth and request rate. The cluster settings
``origin_rate_limit`` (bytes/s) and ``origin_max_inflight`` (requests) bound the cluster;
each node takes its weight's share of both, re-computed whenever the settings or the
membership change (no restart). This node's own ``--origin-max-inflight`` caps it too.
Misses over the limit wait their turn in a bounded queue; one that waits longer than
``queue_timeout`` fails with a clear error (503) instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiolimiter import AsyncLimiter

from cachenode.metrics import SHIELD_WAIT
from clientlib.errors import OriginError
from clientlib.ring import RingWatcher

__all__ = ["OriginShield"]

log = logging.getLogger(__name__)


class ShieldBusy(OriginError):
    """The origin shield's queue is full or a miss waited too long for its turn."""

    http_status = 503


class OriginShield:
    """Admits origin requests within this node's share of the cluster's limits."""

    def __init__(
        self,
        node_id: str,
        local_max_inflight: int,
        watcher: RingWatcher | None = None,
        queue_limit: int = 4096,
        queue_timeout: float = 120.0,
    ) -> None:
        self._node_id = node_id
        self._local_max = local_max_inflight
        self._watcher = watcher
        self._queue_limit = queue_limit
        self._queue_timeout = queue_timeout
        self._inflight = 0
        self._waiting = 0
        self._changed = asyncio.Condition()
        self.max_inflight = local_max_inflight
        self.rate = 0.0
        self._limiter: AsyncLimiter | None = None
        self._seen: tuple[object, object] | None = None

    def _share(self) -> float:
        """This node's fraction of the cluster: its weight over the active weights."""
        if self._watcher is None:
            return 1.0
        nodes = [n for n in self._watcher.ring.nodes.values() if n.state == "active"]
        me = next((n for n in nodes if n.id == self._node_id), None)
        total = sum(n.weight for n in nodes)
        if me is None or total <= 0:
            return 1.0
        return me.weight / total

    def refresh(self) -> None:
        """Re-read the settings and this node's share if the ring or config changed."""
        if self._watcher is None:
            return
        key = (self._watcher.ring, self._watcher.config)
        if key == self._seen:
            return
        self._seen = key
        config, share = self._watcher.config, self._share()
        cluster_inflight = config.origin_max_inflight
        self.max_inflight = self._local_max
        if cluster_inflight:
            self.max_inflight = max(1, min(self._local_max, round(cluster_inflight * share)))
        rate = config.origin_rate_limit * share
        if rate != self.rate:
            self.rate = rate
            self._limiter = AsyncLimiter(rate, 1.0) if rate > 0 else None
            log.info(
                "node %s origin shield: %.0f bytes/s, %d in flight (share %.3f)",
                self._node_id,
                rate,
                self.max_inflight,
                share,
            )

    @contextlib.asynccontextmanager
    async def request(self, nbytes: int) -> AsyncIterator[None]:
        """Hold one origin request slot, with ``nbytes`` of rate budget paid up front."""
        self.refresh()
        if self._waiting >= self._queue_limit:
            raise ShieldBusy("origin shield queue is full; try again later")
        started = time.monotonic()
        self._waiting += 1
        try:
            async with asyncio.timeout(self._queue_timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: self._inflight < self.max_inflight)
                    self._inflight += 1
                limiter = self._limiter
                try:
                    if limiter is not None:
                        # A leaky bucket admits at most its rate at once: pay in pieces.
                        left = float(nbytes)
                        while left > 0:
                            piece = min(left, limiter.max_rate)
                            await limiter.acquire(piece)
                            left -= piece
                except BaseException:
                    await self._release()
                    raise
        except TimeoutError:
            raise ShieldBusy(
                f"waited {self._queue_timeout:.0f}s for the origin shield; origin limits "
                "too low for this load?"
            ) from None
        finally:
            self._waiting -= 1
        SHIELD_WAIT.observe(time.monotonic() - started)
        try:
            yield
        finally:
            await self._release()

    async def _release(self) -> None:
        async with self._changed:
            self._inflight -= 1
            self._changed.notify_all()
