"""Authentication and scope on real nodes: nothing leaks, even from the cache."""

from __future__ import annotations

import os
import time
from unittest import mock

import aiohttp
import pytest
from yarl import URL

from clientlib import CacheClient
from clientlib.auth import Credentials
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from tests.conftest import cachectl, node_metric, run_cachectl


@pytest.fixture
def secret(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "cluster.secret"
    path.write_text(os.urandom(24).hex() + "\n")
    return path


@pytest.fixture
def two_buckets(s3):  # type: ignore[no-untyped-def]
    out = {}
    for team in ("alpha", "beta"):
        name = f"{team}-{os.getpid()}-{time.monotonic_ns()}"
        s3.create_bucket(Bucket=name)
        out[team] = (name, os.urandom(BS + 10))
        s3.put_object(Bucket=name, Key="signals.parquet", Body=out[team][1])
    return out


async def make_token(cluster, secret, scope: str, *extra: str):  # type: ignore[no-untyped-def]
    result = await run_cachectl(
        "--token-file", str(secret), "token", "create", "--scope", scope, *extra
    )
    assert result.returncode == 0, result.stderr
    path = secret.parent / f"token-{time.monotonic_ns()}"
    path.write_bytes(result.stdout)
    return path


async def get_block(node, client: CacheClient, url: str, credentials: Credentials) -> int:  # type: ignore[no-untyped-def]
    info = await client.stat(url)
    ref = client.block_ref(info, 0)
    query = client._source_query(ref)
    target = URL(f"{node.url}/v1/blocks/{ref.id}?{query}", encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.get(target, headers=credentials.headers("GET", target.raw_path_qs)) as resp,
    ):
        return resp.status


async def test_scoped_token_cannot_read_another_teams_blocks_even_when_cached(
    make_cluster, client_for, secret, two_buckets
):
    cluster = make_cluster(2, extra=["--token-file", str(secret)])
    alpha, beta = two_buckets["alpha"], two_buckets["beta"]
    operator = await client_for(cluster, token_file=str(secret))
    for name, body in (alpha, beta):
        assert await operator.read(f"s3://{name}/signals.parquet") == body  # now cached
    token = await make_token(cluster, secret, f"s3://{alpha[0]}/", "--tenant", "alpha")
    alpha_creds = Credentials.from_file(token)
    beta_url = f"s3://{beta[0]}/signals.parquet"
    alpha_url = f"s3://{alpha[0]}/signals.parquet"
    for node in cluster.nodes:
        assert await get_block(node, operator, beta_url, alpha_creds) == 403
        assert await get_block(node, operator, alpha_url, alpha_creds) == 200
        assert await get_block(node, operator, alpha_url, Credentials()) == 401
    assert cluster.metric("ringcache_requests_refused_total", 'reason="forbidden"') == 2
    assert cluster.metric("ringcache_requests_refused_total", 'reason="unauthorized"') == 2

    team = await client_for(cluster, token_file=str(token))
    assert await team.read(alpha_url) == alpha[1]
    # Served bytes are accounted to the token's tenant (fair share and its metrics).
    assert cluster.metric("ringcache_tenant_served_bytes_total", 'tenant="alpha"') >= len(alpha[1])
    before = cluster.metric("ringcache_served_bytes_total")
    # The team's client is refused by the cache and reads the other bucket with its own
    # S3 credentials (here: the test's): the cache served it nothing.
    assert await team.read(beta_url) == beta[1]
    assert cluster.metric("ringcache_served_bytes_total") == before


async def test_expired_tampered_replayed_and_missing_signatures_are_refused(
    make_cluster, client_for, secret, two_buckets
):
    cluster = make_cluster(1, extra=["--token-file", str(secret)])
    node = cluster.nodes[0]
    name, _ = two_buckets["alpha"]
    url = f"s3://{name}/signals.parquet"
    operator = await client_for(cluster, token_file=str(secret))
    short = await make_token(cluster, secret, f"s3://{name}/", "--ttl", "1s")
    assert await get_block(node, operator, url, Credentials.from_file(short)) == 200
    time.sleep(1.5)
    assert await get_block(node, operator, url, Credentials.from_file(short)) == 401

    good = Credentials.from_file(await make_token(cluster, secret, f"s3://{name}/"))
    forged = Credentials(good._payload, b"x" * 32)
    assert await get_block(node, operator, url, forged) == 401

    class Stale(Credentials):
        """Signs as two minutes ago: a captured request replayed later."""

        def headers(self, method: str, path_qs: str, digest: str = "") -> dict[str, str]:
            with mock.patch("clientlib.auth.time.time", return_value=time.time() - 120):
                return good.headers(method, path_qs, digest)

    assert await get_block(node, operator, url, Stale()) == 401
    assert await get_block(node, operator, url, good) == 200

    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/healthz", "/v1/stats"):
            async with session.get(node.url + path) as resp:
                assert resp.status == 200, path
        async with session.post(f"{node.url}/v1/admin/drain") as resp:
            assert resp.status == 401
    assert node.alive()
    assert node_metric(node, "ringcache_requests_refused_total", 'reason="unauthorized"') == 4


def test_token_command_mistakes_are_one_line(tmp_path, secret):
    short = tmp_path / "short.secret"
    short.write_text("tiny")
    cases = [
        (["token", "create", "--scope", "s3://b/"], "needs --token-file"),
        (["--token-file", str(secret), "token", "create", "--scope", "ftp://x"], "unsupported URL"),
        (
            ["--token-file", str(secret), "token", "create", "--scope", "s3://b/", "--ttl", "soon"],
            "--ttl",
        ),
        (["--token-file", str(short), "token", "create", "--scope", "s3://b/"], "shorter than"),
        (["--token-file", "/nonexistent", "token", "create", "--scope", "s3://b/"], "token file"),
    ]
    for args, message in cases:
        result = cachectl(*args)
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode != 0, args
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
