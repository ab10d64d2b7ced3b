"""Read-through on a miss: one origin fetch per block, however many ask at once.

Concurrent misses of one block share a single origin request (single-flight), and the
origin shield (:mod:`cachenode.shield`) bounds this node's origin requests in flight and
bytes per second, so a burst of misses queues here instead of tripping the object store's
throttling. The fetch runs as its own task: a client that
hangs up does not cancel the fetch the other waiters (and the cache) still want.
"""

from __future__ import annotations

import asyncio
import logging

import cachetools

from cachenode.handoff import Handoff
from cachenode.metrics import BLOCK_HITS, BLOCK_MISSES
from cachenode.shield import OriginShield
from cachenode.store import BlockStore
from clientlib.blocks import BlockRef
from clientlib.errors import OriginError, RingcacheError, VersionMismatch
from clientlib.origin import ObjectInfo, Origins
from clientlib.singleflight import SingleFlight

__all__ = ["ReadThrough"]

log = logging.getLogger(__name__)

#: How long a lookup waits for a fetch of the same block already in flight here.
JOIN_TIMEOUT = 10.0
#: How long an object's stat is trusted when a fill is checked against the origin.
STAT_TTL = 1.0


class ReadThrough:
    """Serves blocks from the store, filling it from the origin on a miss."""

    def __init__(
        self,
        store: BlockStore,
        origins: Origins,
        shield: OriginShield,
        handoff: Handoff | None = None,
    ) -> None:
        self._store = store
        self._origins = origins
        self._handoff = handoff
        self._inflight: SingleFlight[str, bytes] = SingleFlight("origin fetch")
        self._shield = shield
        self._stats: cachetools.TTLCache[str, ObjectInfo] = cachetools.TTLCache(
            maxsize=4096, ttl=STAT_TTL
        )

    async def cached(self, block_id: str) -> bytes | None:
        """The verified block if the store has it (a hit) or is fetching it, else ``None``."""
        data = await self._store.get(block_id)
        if data is not None:
            BLOCK_HITS.inc()
            return data
        return await self.join(block_id)

    def fetching(self, block_id: str) -> bool:
        """Whether a fetch of ``block_id`` is in flight here."""
        return block_id in self._inflight

    async def join(self, block_id: str) -> bytes | None:
        """The block from a fetch already in flight here, else ``None`` at once.

        This matters for lookups from other nodes: a hedged or hot read sends a second
        node here (handoff) while this node is still fetching the block, and waiting for
        that fetch beats a second origin request. A join is counted as a miss, as it is
        one.
        """
        task = self._inflight.get(block_id)
        if task is None:
            return None
        BLOCK_MISSES.inc()
        try:
            return await asyncio.wait_for(asyncio.shield(task), JOIN_TIMEOUT)
        except (RingcacheError, TimeoutError):
            return None

    def shield_state(self) -> dict[str, int]:
        """This node's current share of the cluster's origin limits (0: unlimited)."""
        self._shield.refresh()
        return {
            "origin_rate_limit": round(self._shield.rate),
            "origin_max_inflight": self._shield.max_inflight,
        }

    def check(self, ref: BlockRef) -> None:
        """Refuse now what the origin would refuse (e.g. a file outside the roots)."""
        self._origins.check(ref.url)

    async def check_current(self, ref: BlockRef) -> None:
        """Refuse (:class:`VersionMismatch`) a block of any object version but the one the
        origin has now, or of another size: what a fill must be for (a stat at most
        :data:`STAT_TTL` seconds old, so a burst of fills of one object costs one)."""
        self.check(ref)
        info = self._stats.get(ref.url)
        if info is None:
            async with self._shield.request(0):
                info = await (await self._origins.get(ref.url)).stat(ref.url)
            self._stats[ref.url] = info
        if info.version != ref.version or info.size != ref.size:
            raise VersionMismatch(
                f"{ref.url} is version {info.version} of {info.size} bytes in the origin, "
                f"not {ref.version} of {ref.size}"
            )

    async def get(self, ref: BlockRef, block_id: str) -> tuple[bytes, bool]:
        """Return ``(data, was_hit)`` for the block ``ref`` (whose id is ``block_id``)."""
        data = await self.cached(block_id)
        if data is not None:
            return data, True
        return await self.fetch(ref, block_id), False

    async def fetch(self, ref: BlockRef, block_id: str) -> bytes:
        """The miss path: one shared fetch (handoff, then origin) per block in flight."""
        BLOCK_MISSES.inc()
        return await self._inflight.run(block_id, lambda: self._fetch(ref, block_id))

    async def _fetch(self, ref: BlockRef, block_id: str) -> bytes:
        data = None
        if self._handoff is not None:
            data = await self._handoff.fetch(block_id, ref.length)
        if data is None:
            async with self._shield.request(ref.length):
                origin = await self._origins.get(ref.url)
                data = await origin.read(
                    ref.url, ref.offset, ref.length, ref.version, size=ref.size
                )
        if len(data) != ref.length:
            raise OriginError(
                f"origin returned {len(data)} bytes for block {block_id} of {ref.url}, "
                f"expected {ref.length}"
            )
        if not await self._store.put(block_id, data):
            log.warning("block %s of %s served without caching it", block_id, ref.url)
        return data

    async def fill(self, block_id: str, data: bytes) -> bool:
        """Store a block pushed by a client (fill-on-write); never blocks on the origin."""
        return await self._store.put(block_id, data)
