"""The fair-share scheduler: as a unit (one class, no servers), then on a real node."""

from __future__ import annotations

import asyncio
import contextlib
import os

import aiohttp
from yarl import URL

from cachenode.fairshare import FairScheduler
from clientlib.auth import Credentials
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from tests.conftest import make_token, node_metric


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


async def test_a_light_tenant_is_served_its_share_of_a_real_node_a_heavy_tenant_floods(
    make_cluster, client_for, secret, s3, bucket
):
    """One real node with one serving slot, hits only, two tenants' tokens: a heavy tenant
    with 24 block GETs in flight and a light one with 3. In arrival order every request
    would wait behind the whole queue; with fair share a light request waits about one
    turn. Queue waits are the measure because they do not depend on how fast this test's
    own readers send the next request (on a loaded machine they lag, and the light
    tenant's share of bytes falls with its queue, not with the scheduler)."""
    cluster = make_cluster(1, extra=["--token-file", str(secret), "--serve-slots", "1"])
    node = cluster.nodes[0]
    urls = [f"s3://{bucket}/o{i}" for i in range(4)]
    for url in urls:
        s3.put_object(Bucket=bucket, Key=url.rsplit("/", 1)[1], Body=os.urandom(BS))
    operator = await client_for(cluster, token_file=str(secret))
    targets = []
    for url in urls:
        await operator.read(url)  # cached: what follows is hits only
        ref = operator.block_ref(await operator.stat(url), 0)
        query = ref.query()
        targets.append(URL(f"{node.url}/v1/blocks/{ref.id}?{query}", encoded=True))
    credentials = {}
    for tenant in ("heavy", "light"):
        token = await make_token(cluster, secret, f"s3://{bucket}/", "--tenant", tenant)
        credentials[tenant] = Credentials.from_file(token)
    stop = asyncio.Event()

    async def reader(session: aiohttp.ClientSession, tenant: str, n: int) -> None:
        while not stop.is_set():
            target = targets[n % len(targets)]
            headers = credentials[tenant].headers("GET", target.raw_path_qs, node=node.node_id)
            async with session.get(target, headers=headers) as resp:
                assert resp.status == 200
                assert len(await resp.read()) == BS

    def waits() -> dict[str, tuple[float, float]]:
        return {
            t: (
                node_metric(node, "ringcache_tenant_queue_seconds_sum", f'tenant="{t}"'),
                node_metric(node, "ringcache_tenant_queue_seconds_count", f'tenant="{t}"'),
            )
            for t in ("heavy", "light")
        }

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(reader(session, "heavy", n)) for n in range(24)]
        tasks += [asyncio.create_task(reader(session, "light", n)) for n in range(3)]
        try:
            await asyncio.sleep(1)  # the flood is on
            before = await asyncio.to_thread(waits)
            await asyncio.sleep(3)
            after = await asyncio.to_thread(waits)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    mean_wait = {}
    for t in ("heavy", "light"):
        seconds, count = (after[t][i] - before[t][i] for i in (0, 1))
        assert count > 0, (t, before, after)
        mean_wait[t] = seconds / count
    assert mean_wait["light"] < 0.25 * mean_wait["heavy"], mean_wait
