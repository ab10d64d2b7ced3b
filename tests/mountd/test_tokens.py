"""Mounts against a token-protected cluster: a scoped token reads, a --write token fills."""

from __future__ import annotations

import asyncio
import os

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from tests.conftest import make_token


def test_mounts_with_scoped_tokens_read_and_fill_a_token_protected_cluster(
    make_cluster, mount, s3, bucket, secret
):
    cluster = make_cluster(2, extra=["--token-file", str(secret)])
    data = os.urandom(2 * BS + 5)
    s3.put_object(Bucket=bucket, Key="in/a.bin", Body=data)
    read_token = asyncio.run(make_token(cluster, secret, f"s3://{bucket}/"))
    write_token = asyncio.run(make_token(cluster, secret, f"s3://{bucket}/", "--write"))

    # No hedging: a block slower than 1 s on a loaded machine would also be asked of the
    # other node (a miss there, an origin GET), and the counts below would not be exact.
    no_hedge = ("--hedge-delay", "60")
    reader = mount(cluster, f"s3://{bucket}", "--token-file", str(read_token), *no_hedge)
    assert (reader.path / "in" / "a.bin").read_bytes() == data
    # Every block came from a node that took the token, none from the mount's own
    # fallback to the origin (where a refused token would send it).
    assert reader.metric("ringcache_client_block_reads_total", 'source="peer"') == 3
    assert reader.metric("ringcache_client_block_reads_total", 'source="origin"') == 0
    assert cluster.metric("ringcache_requests_refused_total") == 0

    writer = mount(cluster, f"s3://{bucket}", "--token-file", str(write_token))
    out = os.urandom(2 * BS + 777)
    (writer.path / "out").mkdir()
    (writer.path / "out" / "b.bin").write_bytes(out)
    assert s3.get_object(Bucket=bucket, Key="out/b.bin")["Body"].read() == out
    gets, hits = (
        cluster.metric("ringcache_origin_requests_total", 'op="get"'),
        cluster.metric("ringcache_block_hits_total"),
    )
    second = mount(cluster, f"s3://{bucket}", "--token-file", str(read_token), *no_hedge)
    assert (second.path / "out" / "b.bin").read_bytes() == out
    # The writer's token filled the cache: the other mount's reads are hits.
    assert cluster.metric("ringcache_block_hits_total") - hits == 3
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == gets
    assert second.metric("ringcache_client_block_reads_total", 'source="origin"') == 0
    assert cluster.metric("ringcache_requests_refused_total") == 0
