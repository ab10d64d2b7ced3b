"""Read-through on a miss: one origin fetch per block, however many ask at once.

Concurrent misses of one block share a single origin request (single-flight), and the
origin shield (:mod:`cachenode.shield`) bounds this node's origin requests in flight and
bytes per second, so a burst of misses queues here instead of tripping the object store's
throttling. The fetch runs as its own task: a client that
hangs up does not cancel the fetch the other waiters (and the cache) still want.

Every block fetched from the origin is received into a reused page-aligned buffer and
written from it with ``O_DIRECT`` (:mod:`cachenode.blockbuffers`) by the thread that
received it, in one job: no fresh memory and no page cache pages per block, which on a
VM whose freed memory goes back to the host cost more CPU than receiving the bytes (the
nodes' CPU per MB of a cold read fell by a quarter to a third, ``loadtest/results/
mount.md``, eighth session). A block fetched for a client (:meth:`ReadThrough.fetch`)
is copied out by that thread before the write, and the copy handed to the client at
once; a block fetched only to be stored (:meth:`ReadThrough.warm`) is not copied, and a
lookup that joins such a fetch reads the block from the store once it is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import cachetools

from cachenode.blockbuffers import BlockBuffers
from cachenode.handoff import Handoff
from cachenode.metrics import BLOCK_HITS, BLOCK_MISSES
from cachenode.shield import OriginShield
from cachenode.store import BlockStore
from clientlib.blocks import DEFAULT_BLOCK_SIZE, BlockRef
from clientlib.errors import OriginError, RingcacheError, VersionMismatch
from clientlib.origin import ObjectInfo, Origins
from clientlib.singleflight import SingleFlight

__all__ = ["ReadThrough"]

log = logging.getLogger(__name__)

#: How long a lookup waits for a fetch of the same block already in flight here.
JOIN_TIMEOUT = 10.0
#: How long an object's stat is trusted when a fill is checked against the origin.
STAT_TTL = 1.0
#: Idle block buffers kept for fetches (:mod:`cachenode.blockbuffers`): resident memory
#: (32 MiB of 4 MiB blocks) traded for fresh pages. 16 kept a node's memory 70 MiB above
#: main's after a burst of client misses (``tests/cachenode/test_poisoning.py`` bounds
#: it); 8 kept the warmup's speed and CPU (``loadtest/results/mount.md``, eighth session).
IDLE_BUFFERS = 8


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
        #: A fetch's result: the block's bytes, or None when it was fetched only to be
        #: stored (:meth:`warm`) and is in the store.
        self._inflight: SingleFlight[str, bytes | None] = SingleFlight("origin fetch")
        #: The bytes of a fetch for a client (:meth:`fetch`), set as soon as they are
        #: received, before they are written to the store (about 12 ms a 4 MiB block on
        #: a virtio disk: not worth a client's wait).
        self._received: dict[str, asyncio.Future[bytes]] = {}
        self._buffers = BlockBuffers(IDLE_BUFFERS, DEFAULT_BLOCK_SIZE)
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
            data = await asyncio.wait_for(asyncio.shield(task), JOIN_TIMEOUT)
        except (RingcacheError, TimeoutError):
            return None
        return await self._stored(block_id) if data is None else data

    async def _stored(self, block_id: str) -> bytes | None:
        """The block from the store, where a warm fetch just put it (no hit counted)."""
        return await self._store.get(block_id)

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
        """The miss path: one shared fetch (handoff, then origin) per block in flight.

        Its callers get the bytes as soon as they are received and checked
        (:attr:`_received`), while the fetch goes on to write them to the store; it stays
        in flight until then, so a miss of the block meanwhile joins it rather than
        asking the origin again.
        """
        BLOCK_MISSES.inc()
        if block_id not in self._inflight:
            self._received[block_id] = asyncio.get_running_loop().create_future()
        task = self._inflight.start(block_id, lambda: self._fetch(ref, block_id, True))
        received = self._received.get(block_id)
        if received is not None and not task.done():
            await asyncio.wait([task, received], return_when=asyncio.FIRST_COMPLETED)
        if received is not None and received.done():
            return received.result()
        data = await asyncio.shield(task)
        if data is None:  # joined a warm fetch, which stored the block
            data = await self._stored(block_id)
        if data is None:
            raise OriginError(f"block {block_id} of {ref.url} was evicted as it was stored")
        return data

    async def warm(self, ref: BlockRef, block_id: str) -> int:
        """Make the block stored here without anyone getting its bytes (a warmup): the
        bytes fetched for it, 0 if it was stored or being fetched already."""
        if block_id in self._store:
            return 0
        task = self._inflight.get(block_id)
        if task is not None:
            BLOCK_MISSES.inc()
            await asyncio.shield(task)
            return 0
        BLOCK_MISSES.inc()
        await self._inflight.run(block_id, lambda: self._fetch(ref, block_id, False))
        return ref.length

    async def _fetch(self, ref: BlockRef, block_id: str, send: bool) -> bytes | None:
        """Fetch and store the block; its bytes, or with ``send`` false None once it is
        stored (its bytes if it could not be)."""
        received = self._received.get(block_id) if send else None
        try:
            data = None
            if self._handoff is not None:
                data = await self._handoff.fetch(block_id, ref.length)
            if data is None:
                return await self._fetch_to_store(ref, block_id, received)
        finally:
            if received is not None and self._received.get(block_id) is received:
                del self._received[block_id]
        if len(data) != ref.length:
            raise OriginError(
                f"origin returned {len(data)} bytes for block {block_id} of {ref.url}, "
                f"expected {ref.length}"
            )
        if not await self._store.put(block_id, data):
            log.warning("block %s of %s served without caching it", block_id, ref.url)
        return data

    async def _fetch_to_store(
        self, ref: BlockRef, block_id: str, received: asyncio.Future[bytes] | None
    ) -> bytes | None:
        """The origin's bytes of the block received into a reused buffer and written from
        it by the thread that received them (:meth:`BlockStore.put_received`); a copy of
        the bytes for a client's fetch (made by that thread before the write, and set
        on ``received`` at once) or when the block could not be stored, else None.

        The buffer is reused only after a fetch that ended normally: one that failed or
        was cancelled may leave a write in the store's pool still reading it.
        """
        buf = self._buffers.take(ref.length)
        view = memoryview(buf)[: ref.length]
        loop = asyncio.get_running_loop()
        copied: list[bytes] = []
        got = False

        def send_then(write: Callable[[], OSError | None]) -> OSError | None:
            """On the receiving thread: the client's copy first, then the write."""
            data = bytes(view)
            copied.append(data)
            loop.call_soon_threadsafe(_resolve, received, data)
            return write()

        async def receive(write: Callable[[], OSError | None]) -> OSError | None:
            nonlocal got
            then = write if received is None else lambda: send_then(write)
            async with self._shield.request(ref.length):
                origin = await self._origins.get(ref.url)
                failed = await origin.read_into_then(
                    ref.url, ref.offset, view, ref.version, then, size=ref.size
                )
            got = True
            return failed

        stored = await self._store.put_received(block_id, view, receive)
        data = copied[0] if copied else None
        if data is None and got and not stored:
            data = bytes(view)
        view.release()
        self._buffers.give(buf)
        if not stored:
            log.warning("block %s of %s fetched without caching it", block_id, ref.url)
        elif received is not None and data is None:  # stored by another put: not received
            data = await self._stored(block_id)
        return data

    async def fill(self, block_id: str, data: bytes) -> bool:
        """Store a block pushed by a client (fill-on-write); never blocks on the origin."""
        return await self._store.put(block_id, data)


def _resolve(received: asyncio.Future[bytes], data: bytes) -> None:
    """Hand a fetch's bytes to its callers (unless they all went away meanwhile)."""
    if not received.done():
        received.set_result(data)
