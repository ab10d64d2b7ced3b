"""The fair-share scheduler (a unit: one class, no servers)."""

from __future__ import annotations

import asyncio
import contextlib

from cachenode.fairshare import FairScheduler


async def test_a_light_tenant_is_not_starved_by_a_heavy_one():
    scheduler = FairScheduler(slots=1, quantum=100)
    order: list[str] = []

    async def request(tenant: str) -> None:
        async with scheduler.slot(tenant, 100):
            order.append(tenant)
            await asyncio.sleep(0)

    async with scheduler.slot("heavy", 100):  # the node is saturated
        tasks = [asyncio.create_task(request("heavy")) for _ in range(50)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request("light")) for _ in range(5)]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    # Round robin: the light tenant's 5 requests are done within the first 10 grants,
    # not after the heavy tenant's 50.
    assert order[:10].count("light") == 5
    assert order.count("heavy") == 50
    assert scheduler.queued == 0


async def test_costs_are_shared_by_bytes_not_by_requests():
    scheduler = FairScheduler(slots=1, quantum=1000)
    served: dict[str, int] = {"big": 0, "small": 0}
    log: list[tuple[str, int]] = []

    async def request(tenant: str, cost: int) -> None:
        async with scheduler.slot(tenant, cost):
            served[tenant] += cost
            log.append((tenant, cost))
            await asyncio.sleep(0)

    async with scheduler.slot("x", 1):
        tasks = [asyncio.create_task(request("big", 1000)) for _ in range(20)]
        tasks += [asyncio.create_task(request("small", 100)) for _ in range(200)]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    # Over the first 10 000 bytes granted, each tenant got about half.
    total = big = 0
    for tenant, cost in log:
        if total >= 10_000:
            break
        total += cost
        big += cost if tenant == "big" else 0
    assert 0.4 <= big / total <= 0.6, (big, total)


async def test_a_waiter_that_gives_up_frees_nothing_it_did_not_take():
    scheduler = FairScheduler(slots=1)
    async with scheduler.slot("a", 1):
        waiter = asyncio.create_task(scheduler.slot("b", 1).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    async with asyncio.timeout(1), scheduler.slot("c", 1):
        pass
    assert scheduler.queued == 0


async def test_a_paused_slot_serves_others_and_is_taken_back_in_turn():
    scheduler = FairScheduler(slots=1)
    served: list[str] = []
    origin = asyncio.Event()

    async def miss() -> None:
        async with scheduler.slot("a", 1) as slot:
            async with slot.paused():  # waiting for the origin
                await origin.wait()
            served.append("miss")

    async def hit() -> None:
        async with scheduler.slot("b", 1):
            served.append("hit")

    waiting = asyncio.create_task(miss())
    await asyncio.sleep(0)
    await asyncio.wait_for(hit(), 1)  # the only slot was free while the miss waited
    assert served == ["hit"]
    origin.set()
    await waiting
    assert served == ["hit", "miss"]
    async with scheduler.slot("c", 1):  # every slot was given back exactly once
        assert not scheduler.try_acquire()
    assert scheduler.try_acquire()
    scheduler.release()


async def test_a_slot_paused_by_a_failed_fetch_is_not_given_back_twice():
    scheduler = FairScheduler(slots=1)
    with contextlib.suppress(RuntimeError):
        async with scheduler.slot("a", 1) as slot, slot.paused():
            raise RuntimeError("origin failed")
    assert scheduler.try_acquire()  # the one slot is free...
    assert not scheduler.try_acquire()  # ...and only one
    scheduler.release()
