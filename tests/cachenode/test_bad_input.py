"""Bad input to a real cachenode: every case a clear 4xx, and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys

import aiohttp
import msgpack
import pytest

from cachenode.fasthits import HEAD_TIMEOUT
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.blocks import block_id
from clientlib.launcher import free_port


@pytest.fixture
def node(make_cluster):  # type: ignore[no-untyped-def]
    return make_cluster(1).nodes[0]


@pytest.fixture
def s3_obj(s3, bucket):  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    url = f"s3://{bucket}/k"
    bid = block_id(f"s3://{bucket}", "k", etag, BS, 0)
    return url, etag, bid


def params(url: str, etag: str, **over: object) -> dict[str, str]:
    base = {"src": url, "ver": etag, "size": "1000", "bs": str(BS), "i": "0"}
    base.update({k: str(v) for k, v in over.items()})
    return base


async def status_and_error(resp: aiohttp.ClientResponse) -> tuple[int, str]:
    try:
        doc = await resp.json(content_type=None)
        return resp.status, str(doc.get("error", ""))
    except ValueError:
        return resp.status, ""


async def test_malformed_requests_get_clear_4xx_and_node_keeps_serving(node, s3_obj):
    url, etag, bid = s3_obj
    other = "0" * 32
    cases = [
        ("GET", "/v1/blocks/not-a-block-id", None, None, 400, "malformed block id"),
        ("GET", "/v1/blocks/" + "A" * 32, None, None, 400, "malformed block id"),
        ("GET", "/v1/blocks/..%2F..%2Fetc%2Fpasswd", None, None, 400, "malformed block id"),
        ("GET", "/v1/blocks/%2e%2e", None, None, 404, "Not Found"),
        ("GET", f"/v1/blocks/{other}", None, None, 404, "not cached"),
        ("GET", f"/v1/blocks/{other}", params(url, etag), None, 400, "does not match"),
        ("GET", f"/v1/blocks/{bid}", params(url, etag, size="x"), None, 400, "'size'"),
        ("GET", f"/v1/blocks/{bid}", params(url, etag, size=-1), None, 400, "'size'"),
        ("GET", f"/v1/blocks/{bid}", params(url, etag, bs=1000), None, 400, "power of two"),
        ("GET", f"/v1/blocks/{bid}", params(url, etag, i=99), None, 400, "outside"),
        ("GET", f"/v1/blocks/{bid}", params("ftp://x/y", etag), None, 400, "unsupported URL"),
        ("GET", f"/v1/blocks/{bid}", params("s3://B@D/y", etag), None, 400, "bucket"),
        ("GET", f"/v1/blocks/{bid}", params(url, "v" * 5000), None, 400, "too long"),
        ("GET", f"/v1/blocks/{bid}", {"src": url}, None, 400, "required"),
        ("PUT", f"/v1/blocks/{bid}", params(url, etag), b"short", 400, "1000 bytes"),
        ("PUT", f"/v1/blocks/{bid}", params(url, etag), b"y" * (BS * 17), 400, "1000 bytes"),
        ("POST", "/v1/blocks/query", None, b"\xc1garbage", 400, "msgpack"),
        ("POST", "/v1/blocks/query", None, msgpack.packb({"ids": ["x"]}), 400, "block id"),
        ("POST", "/v1/blocks/query", None, msgpack.packb([1, 2]), 400, "ids"),
        ("POST", "/v1/blocks/evict", None, msgpack.packb({"ids": [1]}), 400, "ids"),
        ("POST", "/v1/blocks/query", None, msgpack.packb({"ids": ["a" * 32] * 10001}), 400, ""),
        ("GET", "/no/such/route", None, None, 404, ""),
        ("DELETE", f"/v1/blocks/{bid}", None, None, 405, ""),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, query, body, want, message in cases:
            headers = (
                {"Content-Type": "application/msgpack"} if path.endswith(("query", "evict")) else {}
            )
            async with session.request(
                method, node.url + path, params=query, data=body, headers=headers
            ) as resp:
                status, error = await status_and_error(resp)
            assert status == want, (method, path, query and query.get("size"), status, error)
            assert message in error, (path, error)
        async with session.get(node.url + "/healthz") as resp:
            assert resp.status == 200
    assert node.alive()


async def test_put_fills_and_body_over_the_limit_is_refused(node, s3_obj):
    url, etag, bid = s3_obj
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{node.url}/v1/blocks/{bid}", params=params(url, etag), data=b"q" * 1000
        ) as resp:
            assert resp.status == 201
        async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
            assert resp.status == 200 and await resp.read() == b"q" * 1000
        async with session.post(
            f"{node.url}/v1/blocks/query",
            data=msgpack.packb({"ids": [bid, "f" * 32]}),
            headers={"Content-Type": "application/msgpack"},
        ) as resp:
            assert msgpack.unpackb(await resp.read()) == {"present": [True, False]}
        async with session.post(
            f"{node.url}/v1/blocks/evict",
            data=msgpack.packb({"ids": [bid]}),
            headers={"Content-Type": "application/msgpack"},
        ) as resp:
            assert msgpack.unpackb(await resp.read()) == {"evicted": 1}
        async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
            assert resp.status == 404
        huge = b"h" * (64 * 1024 * 1024 + 2)
        async with session.post(
            f"{node.url}/v1/blocks/query",
            data=huge,
            headers={"Content-Type": "application/msgpack"},
        ) as resp:
            assert resp.status == 413


async def test_truncated_body_and_garbage_on_the_socket_do_not_hurt_the_node(node, s3_obj):
    url, etag, bid = s3_obj
    host, port = node.addr.split(":")
    query = f"src={url}&ver={etag}&size=1000&bs={BS}&i=0"
    for raw in [
        f"PUT /v1/blocks/{bid}?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
        "GARBAGE\r\n\r\n",
        "GET /" + "a" * 70000 + " HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\n" + "X-Big: " + "b" * 70000 + "\r\n\r\n",
    ]:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(raw.encode())
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(200)
        # A clear 4xx; aiohttp says HTTP/1.0 when it never got a whole request line.
        assert not reply or reply.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), reply
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
            assert resp.status == 404  # the truncated PUT stored nothing
        async with session.get(node.url + "/healthz") as resp:
            assert resp.status == 200


def run_cachenode(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachenode", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


GOOD = ["--listen", "127.0.0.1:1", "--etcd", "http://127.0.0.1:1", "--cache-dir", "{dir}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--listen is required"),
        (["--etcd", "http://127.0.0.1:1", "--cache-dir", "{dir}"], "--listen is required"),
        (["--listen", "127.0.0.1:1", "--etcd", "http://127.0.0.1:1"], "--cache-dir"),
        ([*GOOD, "--listen", "nope"], "is not HOST:PORT"),
        ([*GOOD, "--listen", "0.0.0.0:8000"], "--advertise"),
        ([*GOOD, "--cache-dir", "{dir}/b:lots"], "is not a size"),
        ([*GOOD, "--cache-dir", "{dir}/b:10"], "at least 1MiB"),
        ([*GOOD, "--cache-dir", "{dir}"], "given twice"),
        ([*GOOD, "--free-space-ratio", "2"], "outside"),
        ([*GOOD, "--memory-cache", "plenty"], "--memory-cache: 'plenty' is not a size"),
        ([*GOOD, "--weight", "heavy"], "invalid float"),
        ([*GOOD, "--cluster", "a/b"], "bad cluster name"),
        ([*GOOD, "--etcd", "grpc://x"], "bad etcd URL"),
        ([*GOOD, "--file-root", "/nonexistent"], "not a directory"),
        ([*GOOD, "--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_bad_configuration_is_one_clear_line(args, message, tmp_path):
    result = run_cachenode(*(a.replace("{dir}", str(tmp_path)) for a in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("cachenode: error:")
    assert "Traceback" not in result.stderr


def test_unknown_setting_in_config_file_is_one_clear_line(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('listen = "127.0.0.1:1"\ncache_size = 4\n')
    result = run_cachenode("--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cachenode: error: config file {cfg}: unknown setting 'cache_size'"
    )


def test_unreachable_etcd_at_start_is_one_clear_line(tmp_path):
    port = free_port()
    result = run_cachenode(
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--cache-dir",
        f"{tmp_path}:1GiB",
        "--etcd",
        f"http://127.0.0.1:{port}",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cachenode: error: etcd at") and "unreachable" in last
    assert "Traceback" not in result.stderr


def open_fds(node) -> int:  # type: ignore[no-untyped-def]
    return len(os.listdir(f"/proc/{node.popen.pid}/fd"))


async def raw_reply(node, raw: bytes, timeout: float = 5.0) -> bytes:  # type: ignore[no-untyped-def]
    """What the node sends back for ``raw`` before it closes the connection (the client
    does not half-close: an answer must not wait for the client's EOF)."""
    host, port = node.addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def read_block(node, bid: str, query: dict[str, str] | None = None) -> bytes:  # type: ignore[no-untyped-def]
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{node.url}/v1/blocks/{bid}", params=query) as resp,
    ):
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.read()


async def test_garbage_and_bare_lf_heads_get_400_and_a_close(node, s3_obj):
    url, etag, bid = s3_obj
    assert len(await read_block(node, bid, params(url, etag))) == 1000
    for raw in [
        b"GET /v1/blocks/x HTTP/1.1\n\n",
        b"GET /v1/blocks/" + b"a" * 32 + b" HTTP/1.1\nHost: x\n\n",
        b"GET /v1/blocks/" + b"a" * 32 + b" HTTP/1.1\r\nHost: x\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
        b"\x00\x00\x00\x00",
        b"G\xc3\x89T / HTTP/1.1\r\n",
        b"GET /v1/blocks/\x00",
        b"GET /v1/blocks/ HTTP/1.1\rHost: x",
    ]:
        reply = await raw_reply(node, raw)
        assert reply.startswith(b"HTTP/1.1 400 "), (raw[:40], reply)
        assert b"\r\nConnection: close\r\n" in reply and b"malformed request head" in reply
    # After a good request on the same connection too.
    good = f"GET /v1/blocks/{bid} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    reply = await raw_reply(node, good + b"\x16\x03\x01garbage")
    assert reply.startswith(b"HTTP/1.1 200 ") and b"x" * 1000 + b"HTTP/1.1 400 " in reply, reply
    assert await read_block(node, bid) == b"x" * 1000


async def test_partial_heads_are_answered_408_after_the_head_deadline(node, s3_obj):
    url, etag, bid = s3_obj
    assert len(await read_block(node, bid, params(url, etag))) == 1000  # now cached
    host, port = node.addr.split(":")
    before = open_fds(node)
    stalled = [await asyncio.open_connection(host, int(port)) for _ in range(600)]
    for _, writer in stalled:
        writer.write(b"GET /v1/blocks/")
    await asyncio.sleep(1.0)
    assert open_fds(node) >= before + 590  # (nearly) all of them held for now
    await asyncio.sleep(HEAD_TIMEOUT + 1.5)
    replies = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in stalled))
    for _, writer in stalled:
        writer.close()
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in replies), {r[:40] for r in replies}
    assert all(b"\r\nConnection: close\r\n" in r for r in replies)
    # The node let go of them all and serves real reads (fast path and aiohttp's).
    assert open_fds(node) <= before + 5
    assert await read_block(node, bid) == b"x" * 1000
    assert await read_block(node, bid, params(url, etag)) == b"x" * 1000


async def test_a_connection_that_sends_nothing_is_closed_after_the_head_deadline(node):
    host, port = node.addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        assert await asyncio.wait_for(reader.read(), HEAD_TIMEOUT + 3) == b""
    finally:
        writer.close()


async def test_stalled_connections_cannot_starve_real_ones(node, s3_obj):
    url, etag, bid = s3_obj
    assert len(await read_block(node, bid, params(url, etag))) == 1000
    # A node allowed 400 open files; 600 stalled heads must not take them all.
    resource.prlimit(node.popen.pid, resource.RLIMIT_NOFILE, (400, 400))
    await asyncio.sleep(1.5)  # the node notices its limit within a second
    host, port = node.addr.split(":")
    stalled = []
    for _ in range(600):
        stalled.append(await asyncio.open_connection(host, int(port)))
        stalled[-1][1].write(b"GET /v1/blocks/")
    await asyncio.sleep(0.5)
    try:
        assert open_fds(node) < 400
        assert await read_block(node, bid) == b"x" * 1000
        assert await read_block(node, bid, params(url, etag)) == b"x" * 1000
    finally:
        for _, writer in stalled:
            writer.close()
    assert node.alive()


async def test_numbers_are_ascii_digits_only(node, s3_obj):
    """``str.isdigit`` is True for superscripts, other scripts' digits and more."""
    url, etag, bid = s3_obj
    async with aiohttp.ClientSession() as session:
        for cached in (False, True):  # a miss, then a hit (which the fast path reads first)
            for digit in ("\u00b2", "\u0663", "\uff11", "\u2460", "1\u0660"):
                for name in ("size", "bs", "i"):
                    async with session.get(
                        f"{node.url}/v1/blocks/{bid}", params=params(url, etag, **{name: digit})
                    ) as resp:
                        status, error = await status_and_error(resp)
                    assert status == 400 and "ASCII digits" in error, (name, digit, status, error)
                # A lookup by id alone has no use for "bs": no 500 either.
                async with session.get(
                    f"{node.url}/v1/blocks/{'0' * 32}", params={"bs": digit}
                ) as resp:
                    assert resp.status == 404, (digit, await resp.text())
            if not cached:
                await read_block(node, bid, params(url, etag))
    assert node.alive()
