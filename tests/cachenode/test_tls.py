"""TLS on the node port: clients that trust the CA read from peers; others cannot."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from tests.conftest import client_metric, run_cachectl, self_signed_cert


@pytest.fixture
def cert(tmp_path):  # type: ignore[no-untyped-def]
    return self_signed_cert(tmp_path)


async def test_tls_nodes_serve_clients_that_trust_their_ca_and_refuse_plain_http(
    make_cluster, client_for, cert, s3, bucket
):
    pem, key = cert
    tls = ["--tls-cert", str(pem), "--tls-key", str(key), "--ca", str(pem)]
    cluster = make_cluster(2, extra=tls)
    data = os.urandom(2 * BS + 3)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    trusting = await client_for(cluster, ca_file=str(pem))
    assert await trusting.read(f"s3://{bucket}/k") == data
    served = cluster.metric("ringcache_served_bytes_total")
    assert served == len(data)

    # A client that does not trust the certificate gets nothing from the nodes (it reads
    # the origin itself), and plain HTTP to the TLS port is not answered.
    untrusting = await client_for(cluster)
    assert await untrusting.read(f"s3://{bucket}/k") == data
    assert cluster.metric("ringcache_served_bytes_total") == served
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{cluster.nodes[0].addr}/healthz", timeout=5).read()

    status = await run_cachectl(
        "--etcd", cluster.etcd.url, "--cluster", cluster.name, "--ca", str(pem), "status"
    )
    assert status.stdout.decode().count("active") == 2, status.stdout


async def test_hits_over_tls_are_encrypted_and_served(make_cluster, client_for, cert, s3, bucket):
    """A hit is sent with sendfile on plain TCP; on TLS that would put the block on the wire
    unencrypted (the client then sees a broken TLS record and reads the origin instead)."""
    pem, key = cert
    cluster = make_cluster(1, extra=["--tls-cert", str(pem), "--tls-key", str(key)])
    data = os.urandom(3 * BS)
    s3.put_object(Bucket=bucket, Key="hot", Body=data)
    # No hedging: a hit slower than 1 s on a loaded machine would also be read from the
    # origin, and the counts below would not be exact.
    client = await client_for(cluster, ca_file=str(pem), memory_cache_bytes=0, hedge_delay=60)
    assert await client.read(f"s3://{bucket}/hot") == data  # misses: now cached
    errors = client_metric("ringcache_client_fallbacks_total", reason="error")
    peer = client_metric("ringcache_client_block_reads_total", source="peer")
    hits = cluster.metric("ringcache_block_hits_total")
    for _ in range(3):
        assert await client.read(f"s3://{bucket}/hot") == data
    assert client_metric("ringcache_client_fallbacks_total", reason="error") == errors
    assert client_metric("ringcache_client_block_reads_total", source="peer") == peer + 9
    assert cluster.metric("ringcache_block_hits_total") == hits + 9
