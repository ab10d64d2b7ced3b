"""Authentication and scope on real nodes: nothing leaks, even from the cache."""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from yarl import URL

from clientlib import CacheClient
from clientlib.auth import Credentials
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.errors import OriginError
from tests.conftest import cachectl, make_token, node_metric, run_cachectl


@pytest.fixture
def two_buckets(s3):  # type: ignore[no-untyped-def]
    out = {}
    for team in ("alpha", "beta"):
        name = f"{team}-{os.getpid()}-{time.monotonic_ns()}"
        s3.create_bucket(Bucket=name)
        out[team] = (name, os.urandom(BS + 10))
        s3.put_object(Bucket=name, Key="signals.parquet", Body=out[team][1])
    return out


async def get_block(node, client: CacheClient, url: str, credentials: Credentials) -> int:  # type: ignore[no-untyped-def]
    info = await client.stat(url)
    ref = client.block_ref(info, 0)
    query = ref.query()
    target = URL(f"{node.url}/v1/blocks/{ref.id}?{query}", encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            target, headers=credentials.headers("GET", target.raw_path_qs, node=node.node_id)
        ) as resp,
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

        def headers(
            self, method: str, path_qs: str, digest: str = "", node: str = ""
        ) -> dict[str, str]:
            with mock.patch("clientlib.auth.time.time", return_value=time.time() - 120):
                return good.headers(method, path_qs, digest, node)

    assert await get_block(node, operator, url, Stale()) == 401
    assert await get_block(node, operator, url, good) == 200

    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/v1/stats"):
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


async def test_scopes_end_at_path_segments_and_file_urls_are_normalised_first(
    make_cluster, client_for, secret, s3, tmp_path
):
    cluster = make_cluster(1, extra=["--token-file", str(secret)])
    node = cluster.nodes[0]
    stem = f"seg-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    for bucket in (stem, f"{stem}-other"):
        s3.create_bucket(Bucket=bucket)
        for key in ("team/x", "team-other/x"):
            s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(1000))
    private = tmp_path / "private"
    (tmp_path / "pub").mkdir()
    private.mkdir()
    (tmp_path / "pub" / "ok.txt").write_bytes(b"public")
    (private / "k.txt").write_bytes(b"the firm's key")
    operator = await client_for(cluster, token_file=str(secret))

    async def status(scope: str, url: str) -> int:
        creds = Credentials.from_file(await make_token(cluster, secret, scope))
        return await get_block(node, operator, url, creds)

    assert await status(f"s3://{stem}/team", f"s3://{stem}/team/x") == 200
    assert await status(f"s3://{stem}/team", f"s3://{stem}/team-other/x") == 403
    assert await status(f"s3://{stem}", f"s3://{stem}/team-other/x") == 200
    assert await status(f"s3://{stem}", f"s3://{stem}-other/team/x") == 403
    pub = f"file://{tmp_path}/pub/"
    assert await status(pub, f"file://{tmp_path}/pub/ok.txt") == 200
    assert await status(pub, f"file://{tmp_path}/pub/../private/k.txt") == 403
    assert await status(pub, f"file://{tmp_path}/pub//../private/k.txt") == 403
    # A key with dot segments never reaches another object past a scope check.
    creds = Credentials.from_file(await make_token(cluster, secret, f"s3://{stem}/team/"))
    async with aiohttp.ClientSession() as session:
        path = f"/v1/blocks/{'0' * 32}?src=s3://{stem}/team/../team-other/x&ver=v&size=1000&bs={BS}&i=0"
        headers = creds.headers("GET", path, node=node.node_id)
        async with session.get(URL(node.url + path, encoded=True), headers=headers) as resp:
            assert resp.status == 400
    # A token with several scopes covers each of them, and nothing between.
    multi = Credentials.from_file(
        await make_token(cluster, secret, f"s3://{stem}/team/", "--scope", pub)
    )
    assert await get_block(node, operator, f"s3://{stem}/team/x", multi) == 200
    assert await get_block(node, operator, f"file://{tmp_path}/pub/ok.txt", multi) == 200
    assert await get_block(node, operator, f"s3://{stem}/team-other/x", multi) == 403


async def test_presence_queries_and_metrics_tell_a_token_holder_nothing_outside_its_rights(
    make_cluster, client_for, secret, two_buckets
):
    cluster = make_cluster(1, extra=["--token-file", str(secret)])
    node = cluster.nodes[0]
    alpha, beta = two_buckets["alpha"], two_buckets["beta"]
    operator = await client_for(cluster, token_file=str(secret))
    beta_url = f"s3://{beta[0]}/signals.parquet"
    await operator.read(beta_url)  # cached now
    beta_ref = operator.block_ref(await operator.stat(beta_url), 0)
    token = await make_token(cluster, secret, f"s3://{alpha[0]}/", "--tenant", "alpha")
    team = await client_for(cluster, token_file=str(token))
    with pytest.raises(OriginError, match="403"):
        await team.node_call(
            operator.ring.nodes[node.node_id], "/v1/blocks/query", {"ids": [beta_ref.id]}
        )
    item = {"id": beta_ref.id, "src": beta_url, "ver": beta_ref.version, "size": beta_ref.size,
            "bs": BS, "i": 0}  # fmt: skip
    with pytest.raises(OriginError, match="403"):
        await team.node_call(
            operator.ring.nodes[node.node_id], "/v1/blocks/query", {"blocks": [item]}
        )
    answer = await operator.node_call(
        operator.ring.nodes[node.node_id], "/v1/blocks/query", {"blocks": [item]}
    )
    assert answer == {"present": [True]}

    # /metrics names tenants: not for anyone, nor for a read token; a --metrics token
    # works as Prometheus sends it (a static bearer), and reads no data.
    scrape = await run_cachectl("--token-file", str(secret), "token", "create", "--metrics")
    assert scrape.returncode == 0, scrape.stderr
    bearer = scrape.stdout.decode().strip()
    reader = Path(token).read_text().strip()
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + "/metrics") as resp:
            assert resp.status == 401
        async with session.get(
            node.url + "/metrics", headers={"Authorization": f"Bearer {reader}"}
        ) as resp:
            assert resp.status == 403
        async with session.get(
            node.url + "/metrics", headers={"Authorization": f"Bearer {bearer}"}
        ) as resp:
            assert resp.status == 200
            assert "ringcache_block_hits_total" in await resp.text()
    scrape_file = Path(token).parent / "scrape.token"
    scrape_file.write_text(bearer)
    assert await get_block(node, operator, beta_url, Credentials.from_file(scrape_file)) == 403
