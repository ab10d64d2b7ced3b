"""Handoff lookups (``cachenode/handoff.py``) with real processes: skipped once a node has
said it holds nothing stored under an earlier ring, kept where blocks moved."""

from __future__ import annotations

import os

from tests.conftest import node_metric


def _one_block_objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """40 one-block objects put in ``bucket``, by URL: a node of 2 or 3 owns none of
    them with odds of at most 3 * (2/3)^40, 3e-7."""
    objects = {}
    for i in range(40):
        objects[f"s3://{bucket}/{prefix}{i}"] = body = os.urandom(1000)
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i}", Body=body)
    return objects


async def test_nodes_started_together_stop_asking_each_other_after_one_lookup_each(
    make_cluster, client_for, s3, bucket
):
    """Nodes that joined before any block was read have nothing to hand each other: each
    asks another node at most once, then sends its misses straight to the origin."""
    cluster = make_cluster(3)
    objects = _one_block_objects(s3, bucket, "c")
    # No hedging: a hedged read makes a node that is not the block's owner ask the
    # owner whatever the window, which is not what this test is about.
    client = await client_for(cluster, hedge_delay=60)
    for url, body in objects.items():
        assert await client.read(url) == body
    for node in cluster.nodes:
        misses = node_metric(node, "ringcache_block_misses_total")
        assert misses > 0, "a node owns none of the blocks: the test proves nothing"
        assert node_metric(node, "ringcache_handoff_window_seconds") > 0  # still open
        assert node_metric(node, "ringcache_origin_requests_total", 'op="get"') == misses
        # Without the skip, every miss asks first (misses == lookups, as in the window
        # test of tests/cluster); with it, at most one lookup per other node.
        assert node_metric(node, "ringcache_handoffs_total") <= len(cluster.nodes) - 1
        assert node_metric(node, "ringcache_handoffs_total", 'result="hit"') == 0


async def test_a_node_that_held_blocks_when_the_ring_changed_is_still_asked(
    make_cluster, client_for, s3, bucket
):
    """After a scale-out the nodes that were there held blocks under the old ring: the
    new node keeps asking them, and gets every moved block from them."""
    cluster = make_cluster(2)
    objects = _one_block_objects(s3, bucket, "s")
    warm = await client_for(cluster, hedge_delay=60)
    for url, body in objects.items():
        assert await warm.read(url) == body
    new = cluster.add()
    client = await client_for(cluster, nodes=3, hedge_delay=60)
    for url, body in objects.items():
        assert await client.read(url) == body
    moved = node_metric(new, "ringcache_block_misses_total")
    assert moved > 1, "the new node owns too few of the blocks: the test proves little"
    assert node_metric(new, "ringcache_handoffs_total", 'result="hit"') == moved
    assert node_metric(new, "ringcache_origin_requests_total", 'op="get"') == 0
