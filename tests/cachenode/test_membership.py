"""Membership in etcd: leases, re-registration, drain on SIGTERM, etcd outages."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.cluster import node_key, nodes_prefix
from clientlib.etcd import connect
from clientlib.launcher import start_etcd, start_node
from tests.conftest import node_metric, until, wait_ring


async def node_records(etcd_url: str, cluster: str) -> dict[str, dict]:
    async with connect(etcd_url) as etcd:
        result = await etcd.get_prefix(nodes_prefix(cluster))
        return {kv.key.decode(): json.loads(kv.value) | {"lease": kv.lease} for kv in result}


async def test_node_registers_with_a_lease_and_keeps_its_id_across_restarts(make_cluster):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    records = await node_records(cluster.etcd.url, cluster.name)
    assert len(records) == 1
    (record,) = records.values()
    assert record["addr"] == node.addr and record["state"] == "active"
    assert record["lease"] != 0
    assert record["capacity_bytes"] == 1024**3
    assert record["weight"] == pytest.approx(1.0)
    kept = (node.cache_dir / "node-id").read_text().strip()
    assert record["id"] == kept
    cluster.restart(node)
    await asyncio.sleep(0.5)
    records = await node_records(cluster.etcd.url, cluster.name)
    assert [r["id"] for r in records.values()] == [kept]


async def test_sigterm_drains_leaves_the_ring_and_finishes_inflight_reads(
    etcd, s3, bucket, faulty_s3, tmp_path, cluster_name
):
    data = os.urandom(BS)
    s3.put_object(Bucket=bucket, Key="slow", Body=data)
    slow = await faulty_s3(2.0)
    node = start_node(
        etcd.url,
        cluster_name,
        tmp_path / "n0",
        env={**os.environ, "AWS_ENDPOINT_URL": slow.url},
        extra=["--drain-grace", "1"],
    )
    try:
        async with CacheClient(etcd.url, cluster_name) as client:
            await wait_ring(client, 1)
            info = await client.stat(f"s3://{bucket}/slow")
            read = asyncio.create_task(client.read_block(info, 0))
            await until(lambda: slow.gets_in_flight >= 1)  # the node waits on the origin
            node.signal(signal.SIGTERM)
            await wait_ring(client, 0, timeout=5)  # left the ring while still serving
            assert (await node_records(etcd.url, cluster_name))[
                node_key(cluster_name, (node.cache_dir / "node-id").read_text().strip()).decode()
            ]["state"] == "draining"
            assert await read == data
        assert await asyncio.to_thread(node.popen.wait, 15) == 0
        assert await node_records(etcd.url, cluster_name) == {}
    finally:
        node.stop()


async def test_node_keeps_serving_through_an_etcd_outage_and_registers_again(
    private_etcd, s3, bucket, tmp_path, cluster_name
):
    etcd = private_etcd
    data = os.urandom(BS // 2)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    nodes = [
        start_node(etcd.url, cluster_name, tmp_path / f"n{i}", extra=["--lease-ttl", "3"])
        for i in range(2)
    ]
    try:
        async with CacheClient(etcd.url, cluster_name) as client:
            await wait_ring(client, 2)
            url = f"s3://{bucket}/k"
            assert await client.read(url) == data
            etcd.kill()
            await asyncio.sleep(4)
            # Clients keep the last ring, nodes keep serving: the read is a peer hit.
            assert len(client.ring) == 2
            client.clear_local()
            assert await client.read(url) == data
            hits = sum(node_metric(n, "ringcache_block_hits_total") for n in nodes)
            assert hits == 1
            back = start_etcd(etcd.log_path.parent, etcd.client_port, etcd.peer_port)
            try:
                # A lease lost while etcd was away (revoked here) is replaced: the node
                # registers again by itself.
                records = await node_records(etcd.url, cluster_name)
                async with connect(etcd.url) as admin:
                    for record in records.values():
                        await admin.revoke_lease(record["lease"])
                assert await node_records(etcd.url, cluster_name) == {}
                for _ in range(100):
                    records = await node_records(etcd.url, cluster_name)
                    if len(records) == 2:
                        break
                    await asyncio.sleep(0.1)
                assert {r["addr"] for r in records.values()} == {n.addr for n in nodes}
                await wait_ring(client, 2)
            finally:
                back.stop()
    finally:
        for node in nodes:
            node.stop()
