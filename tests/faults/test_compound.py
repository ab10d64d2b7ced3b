"""Compound faults through ``CacheClient``: no mix of dead, hung and trickling owners, nor a
paused etcd, holds a read up until a peer timeout (DESIGN.md, the read path, step 4).

The victims own the first block read. Peer timeouts are 120 s, so a read that waited one
out would also count ``reason="timeout"``: each test asserts the bytes, that no timeout
was counted, and (where an owner hangs) that the origin was raced against the owners.
"""

from __future__ import annotations

import asyncio
import signal

from clientlib import CacheClient
from clientlib.launcher import Etcd
from tests.conftest import Cluster, wait_ring
from tests.faults.inject import Counts, Trickler, check_no_stall, node_at, owned_object
from tests.faults.test_faults import sample

#: Timeouts no test can wait out unnoticed; a hedge delay short enough to keep tests quick.
SLOW_TIMEOUTS = {"hedge_delay": 0.5, "peer_timeout": 120.0, "peer_read_timeout": 120.0}


def client_counts() -> Counts:
    def metric(name: str, labels: str) -> float:
        key, _, value = labels.partition("=")
        return sample(name, **{key: value.strip('"')})

    return Counts(metric)


async def read_unstalled(client, owned, *, raced: bool = True) -> None:  # type: ignore[no-untyped-def]
    counts = client_counts()
    assert await client.read(owned.url) == owned.data
    check_no_stall(*counts.since(), raced=raced)


async def test_dead_and_hung_owners_do_not_stall_a_read(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(3)
    client = await client_for(cluster, memory_cache_bytes=0, **SLOW_TIMEOUTS)
    owned = await owned_object(client, s3, bucket)
    dead, hung = (node_at(cluster, owner) for owner in owned.owners)
    dead.kill()  # its lease has not expired: still on the ring
    hung.signal(signal.SIGSTOP)
    try:
        await read_unstalled(client, owned)
    finally:
        hung.signal(signal.SIGCONT)


async def test_two_hung_owners_do_not_stall_a_read(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(3)
    client = await client_for(cluster, memory_cache_bytes=0, **SLOW_TIMEOUTS)
    owned = await owned_object(client, s3, bucket)
    hung = [node_at(cluster, owner) for owner in owned.owners]
    for node in hung:
        node.signal(signal.SIGSTOP)
    try:
        await read_unstalled(client, owned)
    finally:
        for node in hung:
            node.signal(signal.SIGCONT)


async def test_every_node_hung_does_not_stall_a_read(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(3)
    client = await client_for(cluster, memory_cache_bytes=0, **SLOW_TIMEOUTS)
    owned = await owned_object(client, s3, bucket)
    for node in cluster.nodes:
        node.signal(signal.SIGSTOP)
    try:
        await read_unstalled(client, owned)
    finally:
        for node in cluster.nodes:
            node.signal(signal.SIGCONT)


async def test_every_node_dead_before_its_lease_expires_does_not_stall_a_read(
    make_cluster, client_for, s3, bucket
):
    cluster = make_cluster(3)
    client = await client_for(cluster, memory_cache_bytes=0, **SLOW_TIMEOUTS)
    owned = await owned_object(client, s3, bucket)
    for node in cluster.nodes:
        node.kill()
    assert len(client.ring) == 3  # the records outlive the processes until their leases end
    counts = client_counts()
    assert await client.read(owned.url) == owned.data
    grew, elapsed = counts.since()
    check_no_stall(grew, elapsed, raced=False)  # refused at once: no hedge delay to wait
    assert grew["error"] >= 2 and grew["origin"] == 2, f"owners refused, then the origin: {grew}"


async def test_paused_etcd_and_a_hung_owner_do_not_stall_a_read(
    private_etcd: Etcd, s3, bucket, tmp_path, cluster_name
):
    cluster = Cluster(private_etcd, cluster_name, tmp_path)
    client = CacheClient(private_etcd.url, cluster_name, memory_cache_bytes=0, **SLOW_TIMEOUTS)
    try:
        for _ in range(3):
            cluster.add()
        await client.start()
        await wait_ring(client, 3)
        owned = await owned_object(client, s3, bucket)
        hung = node_at(cluster, owned.owners[0])
        private_etcd.signal(signal.SIGSTOP)
        hung.signal(signal.SIGSTOP)
        try:
            # The next owner may answer before the origin does: a race, not a fallback.
            await read_unstalled(client, owned, raced=False)
        finally:
            hung.signal(signal.SIGCONT)
            private_etcd.signal(signal.SIGCONT)
    finally:
        # Nodes stopped first, the client closed seconds after etcd came back: its ring
        # watch's cancellation used to hang here (aetcd 1.0); close is bounded now.
        cluster.stop()
        await asyncio.wait_for(client.close(), 20)


async def test_an_owner_trickling_one_byte_a_second_does_not_stall_a_read(
    make_cluster, client_for, s3, bucket
):
    cluster = make_cluster(2)
    trickler = Trickler(cluster.etcd.url, cluster.name)
    await trickler.start()
    try:
        client = await client_for(cluster, 3, memory_cache_bytes=0, **SLOW_TIMEOUTS)
        owned = await owned_object(client, s3, bucket, primary=trickler.id)
        await read_unstalled(client, owned)
    finally:
        await trickler.stop()
