"""Faults injected for real: killed, hung and throttled parts, full and vanishing disks.

Every test asserts exact bytes and no failed read where the design promises it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.errors import OriginError
from clientlib.launcher import start_node
from tests.conftest import client_metric as sample
from tests.conftest import node_metric, until, wait_ring


async def test_node_killed_while_fetching_from_a_slow_origin_fails_no_read(
    etcd, s3, bucket, faulty_s3, tmp_path, cluster_name
):
    data = os.urandom(3 * BS)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    slow = await faulty_s3(1.0)
    env = {**os.environ, "AWS_ENDPOINT_URL": slow.url}
    nodes = [start_node(etcd.url, cluster_name, tmp_path / f"n{i}", env=env) for i in range(2)]
    try:
        async with CacheClient(etcd.url, cluster_name) as client:
            await wait_ring(client, 2)
            url = f"s3://{bucket}/k"
            # The victim owns the first block, so a read it was serving is cut off.
            first = client.block_ref(await client.stat(url), 0).id
            owner = client.ring.owners(first, 1)[0]
            victim = next(n for n in nodes if n.addr == owner.addr)
            read = asyncio.create_task(client.read(url))
            # Once the owners wait on the slow origin for all 3 blocks, the victim's first.
            await until(lambda: slow.gets_in_flight >= 3)
            victim.kill()
            assert await read == data
            assert not victim.alive()
    finally:
        for node in nodes:
            node.stop()


async def test_hung_node_is_passed_over_by_hedging_not_by_timeouts(
    make_cluster, client_for, s3, bucket
):
    cluster = make_cluster(3)
    data = os.urandom(6 * BS)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    url = f"s3://{bucket}/k"
    warm = await client_for(cluster)
    assert await warm.read(url) == data
    # Hang the owner of the first block, so at least one block must be hedged (with 3
    # nodes and 6 blocks, a node chosen blindly owns none of them 9% of the time).
    first = warm.block_ref(await warm.stat(url), 0).id
    owner = warm.ring.owners(first, 1)[0]
    hung = next(n for n in cluster.nodes if n.addr == owner.addr)
    hung.signal(signal.SIGSTOP)
    try:
        # The hung node's requests would only end by the 60 s peer timeout: the read
        # finishing at all shows the next owners were asked while they hung.
        client = await client_for(cluster, hedge_delay=0.5, peer_timeout=60)
        before = {
            reason: sample("ringcache_client_fallbacks_total", reason=reason)
            for reason in ("hedge", "timeout")
        }
        peer_reads = sample("ringcache_client_block_reads_total", source="peer")
        origin_reads = sample("ringcache_client_block_reads_total", source="origin")
        assert await client.read(url) == data
        assert sample("ringcache_client_fallbacks_total", reason="hedge") > before["hedge"]
        assert sample("ringcache_client_fallbacks_total", reason="timeout") == before["timeout"]
        # Every block came from a live peer or, once both owners had had their hedge
        # delay (the next owner's miss first asks the hung node for 1 s by handoff), from
        # the origin: never from waiting out the hung node.
        peer = sample("ringcache_client_block_reads_total", source="peer") - peer_reads
        origin = sample("ringcache_client_block_reads_total", source="origin") - origin_reads
        info = await warm.stat(url)
        hung_owns = sum(
            warm.ring.owners(warm.block_ref(info, i).id, 1)[0].addr == hung.addr for i in range(6)
        )
        assert peer + origin == 6 and peer >= 6 - hung_owns
    finally:
        hung.signal(signal.SIGCONT)


async def test_origin_throttling_is_retried_with_backoff(
    etcd, s3, bucket, faulty_s3, tmp_path, cluster_name
):
    data = os.urandom(BS + 5)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    throttled = await faulty_s3(0.0, fail_gets=2)
    node = start_node(
        etcd.url,
        cluster_name,
        tmp_path / "n0",
        env={**os.environ, "AWS_ENDPOINT_URL": throttled.url},
    )
    try:
        # Hedging would read the origin itself while the node backs off (a loaded machine
        # makes the backoff longer than the 1 s default): this test is about the node.
        async with CacheClient(etcd.url, cluster_name, hedge_delay=60) as client:
            await wait_ring(client, 1)
            assert await client.read(f"s3://{bucket}/k") == data
        # The node's GETs hit two 503 SlowDown answers and went on: both blocks cached.
        assert node_metric(node, "ringcache_block_misses_total") == 2
        assert node_metric(node, "ringcache_served_bytes_total", 'result="miss"') == len(data)
    finally:
        node.stop()


async def test_persistent_origin_errors_are_a_clear_error(
    etcd, s3, bucket, faulty_s3, tmp_path, cluster_name, monkeypatch
):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    broken = await faulty_s3(0.0, fail_gets=-1)
    node = start_node(
        etcd.url, cluster_name, tmp_path / "n0", env={**os.environ, "AWS_ENDPOINT_URL": broken.url}
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", broken.url)
    try:
        async with CacheClient(etcd.url, cluster_name) as client:
            await wait_ring(client, 1)
            with pytest.raises(OriginError, match="SlowDown"):
                await client.read(f"s3://{bucket}/k")
        assert node.alive()
    finally:
        node.stop()


@pytest.fixture
def small_tmpfs(tmp_path):  # type: ignore[no-untyped-def]
    """A 12 MiB tmpfs: a cache disk that fills up for real."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(path)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


async def test_full_cache_disk_keeps_serving_hits_and_passes_misses_through(
    etcd, s3, bucket, small_tmpfs, cluster_name
):
    objects = {f"s3://{bucket}/o{i}": os.urandom(BS // 2 + i) for i in range(8)}
    for url, body in objects.items():
        s3.put_object(Bucket=bucket, Key=url.rsplit("/", 1)[1], Body=body)
    cache = small_tmpfs / "cache"
    node = start_node(
        etcd.url, cluster_name, cache, size="64MiB", extra=["--free-space-ratio", "0"]
    )
    try:
        async with CacheClient(etcd.url, cluster_name, memory_cache_bytes=0) as client:
            await wait_ring(client, 1)
            first = next(iter(objects))
            assert await client.read(first) == objects[first]  # cached before the disk fills
            ballast = small_tmpfs / "ballast"
            # Another tenant of the disk fills it up.
            with ballast.open("wb") as fh, pytest.raises(OSError):
                while True:
                    fh.write(b"\0" * (1 << 20))
                    fh.flush()
            for url, body in objects.items():
                assert await client.read(url) == body
            assert await client.read(first) == objects[first]
        assert node.alive()
        assert node_metric(node, "ringcache_block_hits_total") >= 2
    finally:
        node.stop()


async def test_cache_dir_that_disappears_is_taken_out_and_reads_go_on(
    etcd, s3, bucket, tmp_path, cluster_name
):
    data = os.urandom(2 * BS)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    good, doomed = tmp_path / "good", tmp_path / "doomed"
    node = start_node(
        etcd.url,
        cluster_name,
        good,
        extra=["--cache-dir", f"{doomed}:1GiB"],
    )
    try:
        async with CacheClient(etcd.url, cluster_name, memory_cache_bytes=0) as client:
            await wait_ring(client, 1)
            subprocess.run(["rm", "-rf", str(doomed)], check=True)
            for _ in range(3):
                assert await client.read(f"s3://{bucket}/k") == data
        assert node.alive()
        assert node_metric(node, "ringcache_block_hits_total") >= 2  # the good dir still caches
    finally:
        node.stop()


async def test_crash_leftovers_are_cleaned_and_never_served(
    etcd, s3, bucket, tmp_path, cluster_name
):
    data = os.urandom(BS)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    cache = tmp_path / "n0"
    node = start_node(etcd.url, cluster_name, cache)
    async with CacheClient(etcd.url, cluster_name, memory_cache_bytes=0) as client:
        await wait_ring(client, 1)
        assert await client.read(f"s3://{bucket}/k") == data
    node.kill()  # a crash: no clean shutdown
    (block,) = [p for p in (cache / "blocks").rglob("*") if p.is_file()]
    block.write_bytes(block.read_bytes()[: BS // 2])  # half-written by the "crash"
    (cache / "tmp").mkdir(exist_ok=True)
    leftover = cache / "tmp" / "partial-block.tmp"
    leftover.write_bytes(b"junk")
    node = start_node(etcd.url, cluster_name, cache)
    try:
        assert not leftover.exists()
        async with CacheClient(etcd.url, cluster_name, memory_cache_bytes=0) as client:
            await wait_ring(client, 1)
            assert await client.read(f"s3://{bucket}/k") == data
        assert node_metric(node, "ringcache_block_hits_total") == 0
    finally:
        node.stop()
