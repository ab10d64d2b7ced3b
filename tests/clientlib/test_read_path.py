"""The read path end to end: real etcd, moto_server and cachenode processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.blocks import block_id
from tests.conftest import client_metric, node_metric

SIZE = 3 * BS + 12345  # odd size: the last block is short


def payload(size: int, seed: int = 1) -> bytes:
    return (seed.to_bytes(4, "big") + os.urandom(60)) * (size // 64) + b"z" * (size % 64)


@pytest.fixture
def obj(s3, bucket):  # type: ignore[no-untyped-def]
    data = payload(SIZE)
    s3.put_object(Bucket=bucket, Key="bars/2024.bin", Body=data)
    return f"s3://{bucket}/bars/2024.bin", data


async def test_whole_and_ranged_reads_return_exact_bytes_across_block_boundaries(
    make_cluster, client_for, obj
):
    url, data = obj
    cluster = make_cluster(3)
    client = await client_for(cluster)
    assert await client.read(url) == data
    for offset, length in [
        (0, 1),
        (BS - 1, 2),
        (BS - 5, BS + 10),
        (2 * BS, BS),
        (SIZE - 3, 10),
        (SIZE, 5),
        (12345, 3 * BS),
    ]:
        assert await client.read(url, offset, length) == data[offset : offset + length]
    info = await client.stat(url)
    assert info.size == SIZE


async def test_first_read_misses_and_fills_second_reads_hit_without_origin_request(
    make_cluster, client_for, obj
):
    url, data = obj
    cluster = make_cluster(3)
    # No hedge within a minute: a miss slowed past the default second on a loaded
    # machine would send its block to a second owner too, a second miss.
    first = await client_for(cluster, hedge_delay=60)
    assert await first.read(url) == data
    assert cluster.metric("ringcache_block_misses_total") == 4
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == 4
    # A fresh client: its memory tier is empty.
    second = await client_for(cluster, hedge_delay=60)
    assert await second.read(url) == data
    assert cluster.metric("ringcache_block_hits_total") == 4
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == 4


async def test_concurrent_misses_of_one_block_make_one_origin_request(
    make_cluster, client_for, obj
):
    url, data = obj
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    client = await client_for(cluster)
    info = await client.stat(url)
    ref = client.block_ref(info, 1)
    params = {"src": url, "ver": info.version, "size": SIZE, "bs": BS, "i": 1}
    async with aiohttp.ClientSession() as session:

        async def get() -> bytes:
            async with session.get(f"{node.url}/v1/blocks/{ref.id}", params=params) as r:
                assert r.status == 200
                return await r.read()

        bodies = await asyncio.gather(*(get() for _ in range(32)))
    assert all(b == data[BS : 2 * BS] for b in bodies)
    assert node_metric(node, "ringcache_origin_requests_total", 'op="get"') == 1


async def test_read_succeeds_when_an_owner_was_killed(make_cluster, client_for, obj):
    url, data = obj
    cluster = make_cluster(3)
    warm = await client_for(cluster)
    assert await warm.read(url) == data
    first = warm.block_ref(await warm.stat(url), 0).id
    owner = warm.ring.owners(first, 1)[0]
    victim = next(n for n in cluster.nodes if n.addr == owner.addr)
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    # The dead node is still on the ring until its lease expires: the read must go on.
    client = await client_for(cluster, nodes=3)
    errors = client_metric("ringcache_client_fallbacks_total", reason="error")
    assert await client.read(url) == data
    assert client_metric("ringcache_client_fallbacks_total", reason="error") > errors


async def test_read_succeeds_when_every_node_is_gone(make_cluster, client_for, obj):
    url, data = obj
    cluster = make_cluster(2)
    client = await client_for(cluster)
    for node in cluster.nodes:
        node.kill()
    assert await client.read(url) == data


async def test_parts_of_blocks_are_exact_from_nodes_memory_and_origin(
    make_cluster, client_for, obj
):
    """``read_part``: a byte range of one block, from the owner (miss, then hit), from
    the memory tier once the whole block is here, and from the origin with no node."""
    url, data = obj
    cluster = make_cluster(2)
    client = await client_for(cluster, memory_cache_bytes=0)
    info = await client.stat(url)
    spans = [(1, 0, 1), (1, 1000, 70_000), (1, 70_000, BS), (0, BS - 1, BS), (2, 5, 12345)]
    for _ in range(2):  # misses, then hits
        for index, start, stop in spans:
            got = await client.read_part(info, index, start, stop)
            assert got == data[index * BS + start : index * BS + stop], (index, start)
    sent = sum(node_metric(n, "ringcache_served_bytes_total") for n in cluster.nodes)
    assert sent == 2 * sum(stop - start for _, start, stop in spans)
    cached = await client_for(cluster)
    await cached.read_block(info, 1)
    sent = sum(node_metric(n, "ringcache_served_bytes_total") for n in cluster.nodes)
    assert await cached.read_part(info, 1, 10, 20) == data[BS + 10 : BS + 20]
    assert sum(node_metric(n, "ringcache_served_bytes_total") for n in cluster.nodes) == sent
    for node in cluster.nodes:
        node.kill()
    assert await client.read_part(info, 2, 100, 5000) == data[2 * BS + 100 : 2 * BS + 5000]


async def test_blocks_read_without_keep_stay_out_of_the_memory_tier(make_cluster, client_for, obj):
    """``keep=False`` (a mount's read-ahead): the block is exact but not kept, so the
    next read asks a node again; a kept block is read from memory after that."""
    url, data = obj
    cluster = make_cluster(2)
    client = await client_for(cluster)
    info = await client.stat(url)

    def sent() -> float:
        return sum(node_metric(n, "ringcache_served_bytes_total") for n in cluster.nodes)

    for _ in range(2):
        assert await client.read_block(info, 1, keep=False) == data[BS : 2 * BS]
        assert not client.has_local(client.block_ref(info, 1).id)
    assert sent() == 2 * BS
    assert await client.read_block(info, 1) == data[BS : 2 * BS]
    assert client.has_local(client.block_ref(info, 1).id)
    assert await client.read_block(info, 1, keep=False) == data[BS : 2 * BS]
    assert sent() == 3 * BS


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_restarted_node_serves_its_old_blocks_as_hits(make_cluster, client_for, obj, stop):
    url, data = obj
    cluster = make_cluster(1)
    first = await client_for(cluster)
    assert await first.read(url) == data
    if stop == "sigkill":
        cluster.nodes[0].kill()
    node = cluster.restart(cluster.nodes[0])
    second = await client_for(cluster)
    assert await second.read(url) == data
    assert node_metric(node, "ringcache_block_hits_total") == 4
    assert node_metric(node, "ringcache_origin_requests_total", 'op="get"') == 0
    # A clean stop saved the index and the start loaded it; after a crash it was rebuilt
    # from the files (cachenode/indexsnapshot.py).
    loaded = "index loaded from its snapshot" in node.log_path.read_text()
    assert loaded == (stop == "sigterm")


async def test_corrupted_block_file_is_never_served(make_cluster, client_for, obj):
    url, data = obj
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    first = await client_for(cluster)
    assert await first.read(url) == data
    files = [p for p in (node.cache_dir / "blocks").rglob("*") if p.is_file()]
    assert len(files) == 4
    for path in files:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    second = await client_for(cluster)
    assert await second.read(url) == data
    assert node_metric(node, "ringcache_origin_requests_total", 'op="get"') == 8


async def test_eviction_keeps_usage_under_the_cache_limit(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(1, size="10MiB")
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    objects = {}
    for i in range(6):
        objects[f"s3://{bucket}/f{i}"] = body = payload(BS + 1000, seed=i)
        s3.put_object(Bucket=bucket, Key=f"f{i}", Body=body)
    for url, body in objects.items():
        assert await client.read(url) == body
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}/v1/stats") as resp:
        stats = await resp.json()
    assert 0 < stats["used_bytes"] <= 10 * 1024 * 1024
    assert node_metric(node, "ringcache_evictions_total") > 0


async def test_changed_object_is_never_served_from_old_blocks(
    make_cluster, client_for, s3, bucket, obj
):
    url, old = obj
    cluster = make_cluster(2)
    client = await client_for(cluster, stat_ttl=3600)
    assert await client.read(url, 0, 100) == old[:100]  # block 0 cached, stat pinned
    new = payload(SIZE, seed=2)
    s3.put_object(Bucket=bucket, Key="bars/2024.bin", Body=new)
    # The client still believes in the old ETag: the node's If-Match fetch fails and the
    # read restarts on the new version instead of mixing versions.
    assert await client.read(url, BS, 100) == new[BS : BS + 100]
    fresh = await client_for(cluster)
    assert await fresh.read(url) == new


async def test_file_origin_reads_through_nodes_and_refuses_paths_outside_roots(
    make_cluster, client_for, tmp_path
):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    path = tmp_path / "data" / "minute_bars.csv"
    path.parent.mkdir()
    body = payload(BS + 77)
    path.write_bytes(body)
    client = await client_for(cluster)
    assert await client.read(f"file://{path}") == body
    assert node_metric(node, "ringcache_block_misses_total") == 2
    outside = "file:///etc/hostname"
    info = await client.stat(outside)
    bid = block_id("file://", "/etc/hostname", info.version, BS, 0)
    params = {"src": outside, "ver": info.version, "size": info.size, "bs": BS, "i": 0}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{node.url}/v1/blocks/{bid}", params=params) as resp,
    ):
        assert resp.status == 403
    # The client still gets the bytes: it reads them itself when a node refuses.
    assert await client.read(outside) == Path("/etc/hostname").read_bytes()


async def test_client_without_etcd_reads_from_the_origin(s3_endpoint, obj):
    url, data = obj
    async with CacheClient() as client:
        assert await client.read(url, 10, BS) == data[10 : 10 + BS]
