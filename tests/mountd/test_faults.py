"""Compound faults through the mount: a plain ``open()``/``read()`` of a file whose first
block's owners are dead, hung or trickling (or etcd is paused too) returns the right
bytes without waiting out a peer timeout (DESIGN.md, the read path, step 4).

The mount runs with ``--peer-timeout 120``, so a read that waited one out would also
count ``reason="timeout"`` in the mount's metrics (and outlast ``--op-timeout``'s 60 s,
failing with EIO). The file is read in a thread, off the test's event loop.
"""

from __future__ import annotations

import asyncio
import signal

from clientlib import CacheClient
from clientlib.launcher import Etcd
from tests.conftest import Cluster, wait_ring
from tests.faults.inject import Counts, Owned, Trickler, check_no_stall, node_at, owned_object

PEER_TIMEOUT = ("--peer-timeout", "120")


async def owned_in(cluster: Cluster, s3, bucket: str, nodes: int = 3, **kw) -> Owned:  # type: ignore[no-untyped-def]
    """An object whose first block's owners are found on the ring by a client of the
    test's own (closed again before any fault: the mount has its own client)."""
    async with CacheClient(cluster.etcd.url, cluster.name) as client:
        await wait_ring(client, nodes)
        return await owned_object(client, s3, bucket, **kw)


async def mount_for(mount, cluster: Cluster, bucket: str):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(mount, cluster, f"s3://{bucket}", *PEER_TIMEOUT)


async def read_unstalled(m, owned: Owned, *, raced: bool = True) -> None:  # type: ignore[no-untyped-def]
    counts = Counts(m.metric)
    assert await asyncio.to_thread((m.path / owned.key).read_bytes) == owned.data
    check_no_stall(*counts.since(), raced=raced)


async def test_dead_and_hung_owners_do_not_stall_a_mount_read(make_cluster, mount, s3, bucket):
    cluster = make_cluster(3)
    owned = await owned_in(cluster, s3, bucket)
    m = await mount_for(mount, cluster, bucket)
    dead, hung = (node_at(cluster, owner) for owner in owned.owners)
    dead.kill()  # its lease has not expired: still on the ring
    hung.signal(signal.SIGSTOP)
    try:
        await read_unstalled(m, owned)
    finally:
        hung.signal(signal.SIGCONT)


async def test_two_hung_owners_do_not_stall_a_mount_read(make_cluster, mount, s3, bucket):
    cluster = make_cluster(3)
    owned = await owned_in(cluster, s3, bucket)
    m = await mount_for(mount, cluster, bucket)
    hung = [node_at(cluster, owner) for owner in owned.owners]
    for node in hung:
        node.signal(signal.SIGSTOP)
    try:
        await read_unstalled(m, owned)
    finally:
        for node in hung:
            node.signal(signal.SIGCONT)


async def test_every_node_hung_does_not_stall_a_mount_read(make_cluster, mount, s3, bucket):
    cluster = make_cluster(3)
    owned = await owned_in(cluster, s3, bucket)
    m = await mount_for(mount, cluster, bucket)
    for node in cluster.nodes:
        node.signal(signal.SIGSTOP)
    try:
        await read_unstalled(m, owned)
    finally:
        for node in cluster.nodes:
            node.signal(signal.SIGCONT)


async def test_every_node_dead_before_its_lease_expires_does_not_stall_a_mount_read(
    make_cluster, mount, s3, bucket
):
    cluster = make_cluster(3)
    owned = await owned_in(cluster, s3, bucket)
    m = await mount_for(mount, cluster, bucket)
    for node in cluster.nodes:
        node.kill()
    counts = Counts(m.metric)
    assert await asyncio.to_thread((m.path / owned.key).read_bytes) == owned.data
    grew, elapsed = counts.since()
    check_no_stall(grew, elapsed, raced=False)  # refused at once: no hedge delay to wait
    assert grew["error"] >= 2 and grew["origin"] == 2, f"owners refused, then the origin: {grew}"


async def test_paused_etcd_and_a_hung_owner_do_not_stall_a_mount_read(
    private_etcd: Etcd, mount, s3, bucket, tmp_path, cluster_name
):
    cluster = Cluster(private_etcd, cluster_name, tmp_path)
    try:
        for _ in range(3):
            cluster.add()
        owned = await owned_in(cluster, s3, bucket)
        m = await mount_for(mount, cluster, bucket)
        hung = node_at(cluster, owned.owners[0])
        private_etcd.signal(signal.SIGSTOP)
        hung.signal(signal.SIGSTOP)
        try:
            # The next owner may answer before the origin does: a race, not a fallback.
            await read_unstalled(m, owned, raced=False)
        finally:
            hung.signal(signal.SIGCONT)
            private_etcd.signal(signal.SIGCONT)
    finally:
        cluster.stop()


async def test_an_owner_trickling_one_byte_a_second_does_not_stall_a_mount_read(
    make_cluster, mount, s3, bucket
):
    cluster = make_cluster(2)
    trickler = Trickler(cluster.etcd.url, cluster.name)
    await trickler.start()
    try:
        owned = await owned_in(cluster, s3, bucket, primary=trickler.id)
        m = await mount_for(mount, cluster, bucket)
        await read_unstalled(m, owned)
    finally:
        await trickler.stop()
