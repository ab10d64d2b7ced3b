"""Read-through on a miss: one origin fetch per block, however many ask at once.

Concurrent misses of one block share a single origin request (single-flight), and the
origin shield (:mod:`cachenode.shield`) bounds this node's origin requests in flight and
bytes per second, so a burst of misses queues here instead of tripping the object store's
throttling. The fetch runs as its own task: a client that
hangs up does not cancel the fetch the other waiters (and the cache) still want.

Every origin fetch receives the block into a reused page-aligned buffer, and the thread
that received it writes it from there with ``O_DIRECT`` (:mod:`cachenode.blockbuffers`,
:meth:`BlockStore.put_received`), in one job. The misses waiting for the fetch are
answered only once the block is stored (so a hit right after finds it, and a node
killed after answering has it on disk), and are sent the bytes from that same buffer
(:meth:`ReadThrough.missed`), which goes back to the pool once every send is flushed: no
copy of the block is made for them. A warmup's fetch (:meth:`ReadThrough.warm`) is the
same without a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import cachetools

from cachenode.blockbuffers import BlockBuffers, Loan
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
#: (32 MiB of 4 MiB blocks) traded for fresh pages; ``tests/cachenode/test_poisoning.py``
#: bounds a node's memory after a burst of misses.
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
        #: The fetches in flight, and the loan of each (its bytes, see :meth:`_start`).
        self._inflight: SingleFlight[str, None] = SingleFlight("origin fetch")
        self._loans: dict[str, Loan] = {}
        self._buffers = BlockBuffers(IDLE_BUFFERS, DEFAULT_BLOCK_SIZE)
        self._shield = shield
        self._stats: cachetools.TTLCache[str, ObjectInfo] = cachetools.TTLCache(
            maxsize=4096, ttl=STAT_TTL
        )
        if handoff is not None:
            handoff.track_holdings(
                lambda: bool(self._store.block_count or self._inflight or self._store.putting)
            )

    def lookup_headers(self) -> dict[str, str]:
        """What this node's 404 to another node's lookup says (:mod:`cachenode.handoff`)."""
        return {} if self._handoff is None else self._handoff.lookup_headers()

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
            async with self._outcome(block_id, task, JOIN_TIMEOUT) as (_, data):
                return None if data is None else bytes(data)
        except (RingcacheError, TimeoutError):
            return None

    @contextlib.asynccontextmanager
    async def _outcome(
        self, block_id: str, task: asyncio.Task[None], timeout: float | None = None
    ) -> AsyncIterator[tuple[Loan | None, bytes | memoryview | None]]:
        """Wait for the fetch ``task`` of ``block_id`` (at most ``timeout`` seconds), then
        give its loan (if it has one) and the block's bytes: its loan's, held until the
        ``async with`` ends, else the store's (another put stored the block), else None."""
        loan = self._loans.get(block_id)
        if loan is not None:
            loan.hold()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
            data = loan.data if loan is not None else None
            if data is None:  # stored by a fetch that was not this one's
                data = await self._stored(block_id)
            yield loan, data
        finally:
            if loan is not None:
                loan.release()

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

    @contextlib.asynccontextmanager
    async def missed(self, ref: BlockRef, block_id: str) -> AsyncIterator[bytes | memoryview]:
        """The miss path: one shared fetch (handoff, then origin) per block in flight; the
        block's bytes once it is stored, valid until the ``async with`` ends (a view of
        the fetch's buffer, which is reused after: send them, do not keep them).

        An error in the ``async with`` body (a send cut short) keeps the buffer from
        being reused, since the transport may still hold a view of it.
        """
        BLOCK_MISSES.inc()
        task = self._inflight.get(block_id) or self._start(ref, block_id, streamed=True)
        async with self._outcome(block_id, task) as (loan, data):
            if data is None:
                raise OriginError(f"block {block_id} of {ref.url} was evicted as it was stored")
            try:
                yield data
            except BaseException:
                if loan is not None:
                    loan.spoil()
                raise

    async def warm(self, ref: BlockRef, block_id: str) -> int:
        """Make the block stored here without anyone getting its bytes (a warmup): the
        bytes fetched for it, 0 if it was stored or being fetched already."""
        if block_id in self._store:
            return 0
        task = self._inflight.get(block_id)
        BLOCK_MISSES.inc()
        if task is not None:
            await asyncio.shield(task)
            return 0
        await asyncio.shield(self._start(ref, block_id, streamed=False))
        return ref.length

    def _start(self, ref: BlockRef, block_id: str, *, streamed: bool) -> asyncio.Task[None]:
        """Start the fetch of a block nobody is fetching (its task), with a loan held by
        the fetch. With ``streamed`` the block is written as it arrives (see
        :meth:`_fetch_to_store`).

        The loan is listed (:attr:`_loans`) from now until the fetch's last step, so that
        whoever finds it there can hold it before the fetch lets go of it.
        """
        loan = Loan(self._buffers)
        self._loans[block_id] = loan
        return self._inflight.start(block_id, lambda: self._fetch(ref, block_id, loan, streamed))

    async def _fetch(self, ref: BlockRef, block_id: str, loan: Loan, streamed: bool) -> None:
        """Fetch and store the block, its bytes on ``loan`` (None if another put stored
        it meanwhile: then they are in the store)."""
        try:
            data = None
            if self._handoff is not None:
                data = await self._handoff.fetch(block_id, ref.length)
            if data is None:
                await self._fetch_to_store(ref, block_id, loan, streamed)
                return
            # Handed off by another node (of the block's length, checked there).
            if not await self._store.put(block_id, data):
                log.warning("block %s of %s served without caching it", block_id, ref.url)
            loan.data = data
        except BaseException:
            loan.spoil()  # a write of the store's pool may still read the buffer
            raise
        finally:
            if self._loans.get(block_id) is loan:
                del self._loans[block_id]
            loan.release()

    async def _fetch_to_store(
        self, ref: BlockRef, block_id: str, loan: Loan, streamed: bool
    ) -> None:
        """The origin's bytes of the block received into a reused buffer (``loan``'s) and
        written from it by the thread that received them (:meth:`BlockStore.put_received`):
        with ``streamed`` as they arrive (clients wait for the block: they then wait
        after its last byte for the write of the last step only), else in one write
        once all are there (a warmup: nobody waits for the one block, and one write
        costs less than several).
        """
        view = loan.lend(ref.length)
        received = False

        async def receive(
            write: Callable[[], OSError | None], progress: Callable[[int], None]
        ) -> OSError | None:
            nonlocal received
            async with self._shield.request(ref.length):
                origin = await self._origins.get(ref.url)
                failed = await origin.read_into_then(
                    ref.url,
                    ref.offset,
                    view,
                    ref.version,
                    write,
                    size=ref.size,
                    progress=progress if streamed else None,
                )
            received = True
            return failed

        stored = await self._store.put_received(block_id, view, receive)
        if not received:  # stored by another put meanwhile: its bytes are in the store
            loan.data = None
        if not stored:
            log.warning("block %s of %s fetched without caching it", block_id, ref.url)

    async def fill(self, block_id: str, data: bytes) -> bool:
        """Store a block pushed by a client (fill-on-write); never blocks on the origin."""
        return await self._store.put(block_id, data)
