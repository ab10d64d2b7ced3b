"""Tenant fair share: when the node is saturated, tenants are served in fair shares.

A node serves at most ``slots`` block requests at once. Below that nobody waits. Above
it, requests queue per tenant (the tenant named by the request's token) and free slots
go round the tenants by deficit round robin, weighted by the bytes each request will
send: a team with 500 readers and a team with 5 get the same bandwidth while both want
more, so the small team's latency does not grow with the big team's burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from cachenode.metrics import TENANT_QUEUE_SECONDS

__all__ = ["FairScheduler", "Slot"]


class FairScheduler:
    """Deficit round robin over per-tenant queues for a fixed number of serving slots."""

    def __init__(self, slots: int, quantum: int = 4 * 1024 * 1024) -> None:
        self._slots = slots
        self._quantum = quantum
        self._busy = 0
        self._queues: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._deficit: dict[str, int] = {}
        self._active: deque[str] = deque()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, cost: int) -> AsyncIterator[Slot]:
        """Hold one serving slot; waits its tenant's turn while the node is saturated.

        The :class:`Slot` yielded can be given back for a while (:meth:`Slot.paused`):
        a miss does so while its block comes from the origin, so that misses waiting on
        a slow origin do not hold the slots hits need.
        """
        await self.acquire(tenant, cost)
        held = Slot(self, tenant, cost)
        try:
            yield held
        finally:
            if held.held:
                self.release()

    async def acquire(self, tenant: str, cost: int) -> None:
        """Take a slot, waiting the tenant's turn; the caller must :meth:`release` it."""
        started = time.monotonic()
        if self._busy < self._slots and not self._active:
            self._busy += 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self._queues.setdefault(tenant, deque())
            if not queue and tenant not in self._active:
                self._active.append(tenant)
                self._deficit.setdefault(tenant, 0)
            queue.append((max(1, cost), future))
            self._dispatch()
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self.release()  # granted just as the waiter gave up
                raise
        TENANT_QUEUE_SECONDS.labels(tenant).observe(time.monotonic() - started)

    def free(self) -> bool:
        """Whether a slot is free and nobody queues: what :meth:`try_acquire` takes.

        A request answered in full within one call (the fast path's small hits) asks only
        this: the slot it would take would be given back before anything else could run,
        let alone ask for one.
        """
        return self._busy < self._slots and not self._active

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody queues (the hit fast path, which cannot
        wait); the caller must :meth:`release` it. (:meth:`free`'s test, inline: this and
        :meth:`release` run on every large hit.)"""
        if self._busy < self._slots and not self._active:
            self._busy += 1
            return True
        return False

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire` or :meth:`try_acquire`; a queued
        tenant's request gets it."""
        self._busy -= 1
        if self._active:
            self._dispatch()

    def _dispatch(self) -> None:
        """Grant free slots: each visited tenant earns a quantum, spends it on requests."""
        while self._busy < self._slots and self._active:
            tenant = self._active[0]
            queue = self._queues[tenant]
            while queue and queue[0][1].done():  # the waiter gave up
                queue.popleft()
            if not queue:
                self._active.popleft()
                del self._queues[tenant]
                self._deficit.pop(tenant, None)
                continue
            cost, future = queue[0]
            if self._deficit[tenant] < cost:
                self._deficit[tenant] += self._quantum
                self._active.rotate(-1)
                continue
            self._deficit[tenant] -= cost
            queue.popleft()
            self._busy += 1
            future.set_result(None)


class Slot:
    """A serving slot held by one request (see :meth:`FairScheduler.slot`)."""

    def __init__(self, scheduler: FairScheduler, tenant: str, cost: int) -> None:
        self._scheduler = scheduler
        self._tenant = tenant
        self._cost = cost
        self.held = True

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Give the slot back for the block, then wait the tenant's turn for it again."""
        if not self.held:
            yield
            return
        self.held = False
        self._scheduler.release()
        yield  # if the block fails, the slot stays given back
        await self._scheduler.acquire(self._tenant, self._cost)
        self.held = True
