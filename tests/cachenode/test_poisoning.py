"""The cache returns the origin's bytes or nothing: attacks that try to make a node store
or serve anything else, against real nodes, etcd and S3."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from clientlib.auth import DIGEST_HEADER, Credentials, body_digest
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.blocks import BlockRef
from clientlib.cluster import NodeInfo, node_key
from clientlib.etcd import connect
from clientlib.launcher import free_port
from clientlib.tls import server_context
from testkit import issue_cert, make_ca
from tests.conftest import make_token, node_metric, self_signed_cert


def query(ref: BlockRef, **override: object) -> str:
    fields = {"src": ref.url, "ver": ref.version, "size": ref.size, "bs": ref.block_size}
    fields["i"] = ref.index
    fields.update(override)
    return "&".join(f"{k}={v}" for k, v in fields.items())


async def put_block(
    node, ref: BlockRef, body: bytes, creds: Credentials, *, digest: str | None = None, **override
) -> int:  # type: ignore[no-untyped-def]
    target = URL(f"{node.url}/v1/blocks/{ref.id}?{query(ref, **override)}", encoded=True)
    digest = body_digest(body) if digest is None else digest
    headers = creds.headers("PUT", target.raw_path_qs, digest, node=node.node_id)
    headers[DIGEST_HEADER] = digest
    async with (
        aiohttp.ClientSession() as session,
        session.put(target, data=body, headers=headers) as resp,
    ):
        return resp.status


async def get_raw(node, ref: BlockRef, creds: Credentials, **override) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """GET a block with (possibly lying) source parameters; (-1, b"") if the node broke
    the answer off (what it does when a miss fails after the headers)."""
    target = URL(f"{node.url}/v1/blocks/{ref.id}?{query(ref, **override)}", encoded=True)
    headers = creds.headers("GET", target.raw_path_qs, node=node.node_id)
    try:
        async with aiohttp.ClientSession() as session, session.get(target, headers=headers) as resp:
            return resp.status, await resp.read()
    except aiohttp.ClientPayloadError:
        return -1, b""


async def test_fills_need_write_right_signed_body_and_the_current_version(
    make_cluster,
    client_for,
    secret,
    s3,
    bucket,
):
    cluster = make_cluster(1, extra=["--token-file", str(secret)])
    node = cluster.nodes[0]
    real = os.urandom(BS + 100)
    s3.put_object(Bucket=bucket, Key="team/prices.csv", Body=real)
    url = f"s3://{bucket}/team/prices.csv"
    operator = await client_for(cluster, token_file=str(secret))
    info = await operator.stat(url)
    ref = operator.block_ref(info, 0)
    poison = b"\x00" * ref.length

    reader = Credentials.from_file(await make_token(cluster, secret, f"s3://{bucket}/team/"))
    assert await put_block(node, ref, poison, reader) == 403  # read right only
    writer = Credentials.from_file(
        await make_token(cluster, secret, f"s3://{bucket}/team/", "--write")
    )
    # A signature over one body does not carry another.
    assert await put_block(node, ref, poison, writer, digest=body_digest(real[:BS])) == 400
    # A made-up version is refused before its body is taken, and evicts nothing.
    fake = BlockRef(ref.url, ref.origin, ref.key, "made-up", ref.size, ref.block_size, 0)
    assert await put_block(node, fake, poison, writer) == 409
    # So is a lie about the object's size (the block length follows from it).
    short = BlockRef(ref.url, ref.origin, ref.key, ref.version, 10, ref.block_size, 0)
    assert await put_block(node, short, poison[:10], writer) == 409
    assert node_metric(node, "ringcache_cache_used_bytes") == 0

    # Every reader, with its own token, gets the origin's bytes.
    team = await client_for(cluster, token_file=str(await make_token(cluster, secret, url)))
    assert await team.read(url) == real
    # A writer's honest fill of the current version is stored.
    assert await put_block(node, operator.block_ref(info, 1), real[BS:], writer) == 201


async def test_stalled_fill_bodies_are_bounded_and_reads_go_on(
    make_cluster, client_for, s3, bucket
):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(64 * BS))
    client = await client_for(cluster)
    info = await client.stat(f"s3://{bucket}/big")
    rss_before = _rss(node.pid)
    port = int(node.addr.rsplit(":", 1)[1])
    stalled: list[asyncio.StreamWriter] = []
    statuses: list[bytes] = []
    try:
        for index in range(24):
            ref = client.block_ref(info, index)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = (
                f"PUT /v1/blocks/{ref.id}?{query(ref)} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {ref.length}\r\n\r\n"
            ).encode()
            writer.write(head + b"x" * (ref.length - 1))  # all but the last byte
            await writer.drain()
            stalled.append(writer)
            if index >= 16:  # past the node's 16 bodies in flight: refused at once
                statuses.append(await asyncio.wait_for(reader.readline(), 10))
        assert all(b" 503 " in line for line in statuses), statuses
        # Real reads are still served while the stalled bodies are held.
        assert (
            await client.read(info.url, 5 * BS, 1000)
            == (await client.read(info.url))[5 * BS : 5 * BS + 1000]
        )
        assert _rss(node.pid) - rss_before < 200 * 2**20
    finally:
        for writer in stalled:
            writer.close()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_block_geometry_comes_from_the_origin_and_the_cluster(
    make_cluster, client_for, s3, bucket
):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    real = os.urandom(3 * BS)
    s3.put_object(Bucket=bucket, Key="bars.csv", Body=real)
    client = await client_for(cluster)
    info = await client.stat(f"s3://{bucket}/bars.csv")
    ref = client.block_ref(info, 0)
    none = Credentials()
    # size=1 would make block 0 one byte long: the node must not serve or store that.
    lie = BlockRef(ref.url, ref.origin, ref.key, ref.version, 1, ref.block_size, 0)
    assert lie.id == ref.id  # the id does not cover the size: only the origin can tell
    status, body = await get_raw(node, lie, none)
    assert body != real[:1] or status not in (200, 206)
    assert await get_raw(node, ref, none) == (200, real[:BS])  # the real block, from S3
    # A block size other than the cluster's is refused before the origin is asked.
    origin_before = node_metric(node, "ringcache_origin_bytes_total")
    for bs in (16 * 2**20, 64 * 2**20):
        big = BlockRef(ref.url, ref.origin, ref.key, ref.version, ref.size, bs, 0)
        status, _ = await get_raw(node, big, none)
        assert status == 400
    assert node_metric(node, "ringcache_origin_bytes_total") == origin_before


class RogueServer:
    """A server that a forged etcd record points at: answers every block request with
    its own bytes, and keeps the signed headers it is sent."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.port = free_port()
        self._tls = tls
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def block(request: web.Request) -> web.Response:
            self.seen.append((request.raw_path, dict(request.headers)))
            size = BS
            return web.Response(body=b"\xee" * size, headers={"X-Ringcache-Result": "hit"})

        app = web.Application()
        app.router.add_get("/v1/blocks/{id}", block)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._tls).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def rogue() -> AsyncIterator[RogueServer]:
    server = RogueServer()
    await server.start()
    yield server
    await server.stop()


async def test_a_forged_etcd_record_gets_no_bytes_into_the_cache_and_no_replayable_requests(
    make_cluster,
    client_for,
    secret,
    s3,
    bucket,
    rogue,
):
    cluster = make_cluster(2, extra=["--token-file", str(secret)])
    real = os.urandom(8 * BS)
    s3.put_object(Bucket=bucket, Key="prices", Body=real)
    url = f"s3://{bucket}/prices"
    # Whoever can write the cluster's etcd prefix adds a heavy node of their own.
    record = NodeInfo("rogue", f"127.0.0.1:{rogue.port}", 1000.0, 2**40, "active", time.time())
    etcd = connect(cluster.etcd.url)
    await etcd.put(node_key(cluster.name, "rogue"), record.to_json())
    try:
        operator = await client_for(cluster, token_file=str(secret), nodes=3)
        info = await operator.stat(url)
        # Each real node, asked for blocks it misses, first looks for them on the rogue
        # "owner" (handoff); it must store and serve only the origin's bytes.
        for node in cluster.nodes:
            for index in range(8):
                ref = operator.block_ref(info, index)
                assert await get_raw(node, ref, Credentials.from_file(secret)) == (
                    200,
                    real[index * BS : (index + 1) * BS],
                )
        handoffs = [h for path, h in rogue.seen if "?" not in path]
        assert handoffs, "the nodes never asked the rogue owner: the test proves nothing"
        assert (
            sum(
                node_metric(n, "ringcache_handoffs_total", 'result="unproven"')
                for n in cluster.nodes
            )
            >= 1
        )
        # Requests the rogue collected are signed for it: replayed at a real node, refused.
        await operator.read(url)
        replays = [(p, h) for p, h in rogue.seen if "?" in p]
        assert replays, "the client never asked the rogue node"
        async with aiohttp.ClientSession() as session:
            for path, headers in replays[:4]:
                signed = {"Authorization": headers["Authorization"]}
                async with session.get(cluster.nodes[0].url + path, headers=signed) as resp:
                    assert resp.status == 401
    finally:
        await etcd.delete(node_key(cluster.name, "rogue"))
        await etcd.close()


async def test_with_tls_a_client_reads_only_from_nodes_whose_certificate_chains_to_the_ca(
    make_cluster, client_for, s3, bucket, tmp_path
):
    ca = make_ca(tmp_path / "ca")
    cert, key = issue_cert(ca, tmp_path, "node")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--ca", str(ca[0])]
    cluster = make_cluster(2, extra=tls)
    real = os.urandom(8 * BS)
    s3.put_object(Bucket=bucket, Key="prices", Body=real)
    # Two forged records: a plain-HTTP server, and a TLS one with a certificate of its own.
    plain = RogueServer()
    own_cert = self_signed_cert(tmp_path)
    tls_rogue = RogueServer(server_context(*own_cert))
    etcd = connect(cluster.etcd.url)
    try:
        for rogue, scheme in ((plain, "http"), (tls_rogue, "https")):
            await rogue.start()
            record = NodeInfo(
                f"rogue-{scheme}", f"127.0.0.1:{rogue.port}", 1000.0, 2**40, "active",
                time.time(), scheme,
            )  # fmt: skip
            await etcd.put(node_key(cluster.name, record.id), record.to_json())
        client = await client_for(cluster, ca_file=str(ca[0]), nodes=3)  # the http one is out
        assert await client.read(f"s3://{bucket}/prices") == real
        assert plain.seen == [] and tls_rogue.seen == []
        assert cluster.metric("ringcache_served_bytes_total") > 0
    finally:
        for rogue in (plain, tls_rogue):
            await rogue.stop()
            await etcd.delete(
                node_key(cluster.name, f"rogue-{'http' if rogue is plain else 'https'}")
            )
        await etcd.close()
