"""Origin shield and cluster settings: real nodes, real etcd, settings changed live."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.blocks import block_id
from testkit import S3Proxy
from tests.conftest import cachectl, node_metric, run_cachectl


def ctl(cluster, *args: str) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    return ("--etcd", cluster.etcd.url, "--cluster", cluster.name, *args)


async def node_stats(node) -> dict:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}/v1/stats") as r:
        return await r.json()


async def wait_stat(node, key: str, want: int, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (got := (await node_stats(node))[key]) != want:
        assert time.monotonic() < deadline, (key, got, want)
        await asyncio.sleep(0.2)


async def test_origin_rate_limit_bounds_a_cluster_warmup_and_changes_live(make_cluster, s3, bucket):
    cluster = make_cluster(2)
    total = 0
    for i in range(6):
        body = os.urandom(BS)
        total += len(body)
        s3.put_object(Bucket=bucket, Key=f"w/{i}", Body=body)
    limit = 8 * 1024 * 1024
    result = await run_cachectl(*ctl(cluster, "config", "set", "origin_rate_limit", "8MiB"))
    assert result.returncode == 0, result.stderr
    # Each node (equal weights) takes half of the cluster's budget, without a restart.
    for node in cluster.nodes:
        await wait_stat(node, "origin_rate_limit", limit // 2)
    started = time.monotonic()
    warm = await run_cachectl(*ctl(cluster, "warmup", f"s3://{bucket}/w/", "--json"))
    elapsed = time.monotonic() - started
    report = json.loads(warm.stdout)
    assert report["blocks_fetched"] == 6 and report["errors"] == 0
    # A leaky bucket lets one second's worth through at once; the rest waits its turn.
    assert elapsed >= (total - limit) / limit, elapsed
    assert cluster.metric("ringcache_origin_shield_wait_seconds_count") >= 6

    await run_cachectl(*ctl(cluster, "config", "set", "origin_rate_limit", "0"))
    for node in cluster.nodes:
        await wait_stat(node, "origin_rate_limit", 0)


async def test_origin_max_inflight_is_shared_by_weight(make_cluster):
    cluster = make_cluster(0)
    small = cluster.add(extra=["--weight", "1"])
    big = cluster.add(extra=["--weight", "3"])
    await run_cachectl(*ctl(cluster, "config", "set", "origin_max_inflight", "16"))
    await wait_stat(small, "origin_max_inflight", 4)
    await wait_stat(big, "origin_max_inflight", 12)


async def test_config_get_shows_the_settings_and_bad_input_is_one_line(make_cluster):
    cluster = make_cluster(1)
    got = await run_cachectl(*ctl(cluster, "config", "get", "--json"))
    assert json.loads(got.stdout) == {
        "block_size": BS,
        "replicas": 3,
        "origin_rate_limit": 0,
        "origin_max_inflight": 0,
    }
    changed = await run_cachectl(*ctl(cluster, "config", "set", "origin_rate_limit", "2GiB"))
    assert changed.stdout.decode().strip() == "origin_rate_limit = 2147483648 (2 GiB/s)"
    for args, message in [
        (["config", "set", "speed", "1"], "unknown setting 'speed'"),
        (["config", "set", "origin_rate_limit", "fast"], "is not a size"),
        (["config", "set", "replicas", "-1"], "not a non-negative integer"),
        (["config", "set", "replicas", "99"], "outside [1, 16]"),
        (["config", "set", "block_size", "1000"], "power of two"),
        (["config", "set", "replicas"], "the following arguments are required"),
    ]:
        result = cachectl(*ctl(cluster, *args))
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode != 0, args
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    final = await run_cachectl(*ctl(cluster, "config", "get"))
    assert "replicas = 3" in final.stdout.decode()


async def test_misses_waiting_on_a_slow_origin_do_not_hold_the_serving_slots(
    make_cluster, faulty_s3, s3, bucket
):
    slow = await faulty_s3(2.0)
    node = make_cluster(
        1, env={**os.environ, "AWS_ENDPOINT_URL": slow.url}, extra=["--serve-slots", "1"]
    ).nodes[0]

    def source(key: str, body: bytes) -> tuple[str, dict[str, str]]:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        query = {"src": f"s3://{bucket}/{key}", "ver": etag, "size": str(len(body))}
        query.update(bs=str(BS), i="0")
        return f"{node.url}/v1/blocks/{block_id(f's3://{bucket}', key, etag, BS, 0)}", query

    hot_url, hot_query = source("hot", b"h" * 1000)
    cold_url, cold_query = source("cold", b"c" * 2000)
    async with aiohttp.ClientSession() as session:
        async with session.get(hot_url, params=hot_query) as resp:  # cached now
            assert await resp.read() == b"h" * 1000
        answered = asyncio.Event()

        async def cold_read() -> bytes:
            async with session.get(cold_url, params=cold_query) as resp:
                answered.set()  # headers first: the miss now waits on the origin
                return await resp.read()

        cold = asyncio.create_task(cold_read())
        await asyncio.wait_for(answered.wait(), 10)
        # The node's only slot is not held by the waiting miss: the hit is served now,
        # while the origin still holds the cold block back.
        async with session.get(hot_url, params=hot_query) as resp:
            assert await resp.read() == b"h" * 1000
        assert not cold.done()
        assert await cold == b"c" * 2000


async def test_a_node_never_has_more_origin_gets_in_flight_than_its_limit(
    make_cluster, client_for, s3_endpoint, s3, bucket
):
    """``--origin-max-inflight``, then the cluster's ``origin_max_inflight`` set live,
    bound the GETs a node has open at a slow origin while 8 misses want it at once."""
    bodies = {f"s3://{bucket}/f/{i}": os.urandom(64 * 1024 + i) for i in range(16)}
    for url, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=url.split("/", 3)[3], Body=body)
    proxy = S3Proxy(s3_endpoint, delay=0.3)
    await proxy.start()
    try:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        cluster = make_cluster(1, env=env, extra=["--origin-max-inflight", "3"])
        node = cluster.nodes[0]
        # The client reads through the node only: no hedge to the origin of its own.
        client = await client_for(cluster, hedge_delay=60, memory_cache_bytes=0)
        urls = list(bodies)

        async def read_all(batch: list[str]) -> None:
            got = await asyncio.gather(*(client.read(url) for url in batch))
            assert got == [bodies[url] for url in batch]

        await read_all(urls[:8])
        assert proxy.gets >= 8
        assert proxy.max_gets_in_flight == 3  # reached, never passed

        await run_cachectl(*ctl(cluster, "config", "set", "origin_max_inflight", "2"))
        await wait_stat(node, "origin_max_inflight", 2)
        proxy.max_gets_in_flight = 0
        await read_all(urls[8:])
        assert proxy.max_gets_in_flight == 2
    finally:
        await proxy.stop()


async def test_a_cluster_block_size_of_1_mib_splits_reads_into_1_mib_blocks(
    make_cluster, client_for, s3, bucket
):
    """The block size set in etcd before the nodes start is the one clients cut objects
    by and nodes fetch and store: 3.5 MiB is four blocks of 1 MiB, not one of 4 MiB."""
    mib = 1024 * 1024
    cluster = make_cluster(0)
    result = await run_cachectl(*ctl(cluster, "config", "set", "block_size", "1MiB"))
    assert result.returncode == 0, result.stderr
    node = cluster.add()
    data = os.urandom(3 * mib + mib // 2)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    client = await client_for(cluster, memory_cache_bytes=0)
    assert client.block_size == mib
    assert await client.read(f"s3://{bucket}/k") == data
    assert await client.read(f"s3://{bucket}/k", mib - 10, 20) == data[mib - 10 : mib + 10]
    ids = {block_id(f"s3://{bucket}", "k", etag, mib, i) for i in range(4)}
    stored = {p.name.split(".")[0]: p for p in (node.cache_dir / "blocks").rglob("*.*")}
    assert set(stored) == ids
    sizes = sorted(int(p.name.split(".")[1], 16) for p in stored.values())
    assert sizes == [mib // 2, mib, mib, mib]
    assert node_metric(node, "ringcache_block_misses_total") == 4
    assert node_metric(node, "ringcache_origin_bytes_total") == len(data)
    assert (await node_stats(node))["blocks"] == 4
