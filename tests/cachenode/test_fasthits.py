"""The hit fast path (cachenode.fasthits) against a real node: hits it answers are exact,
everything else is handed to aiohttp on the same connection, in order, and its hits
show in the metrics like any other.

Responses from the fast path carry no ``Server`` header (aiohttp's always do), which is
how these tests tell who answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import aiohttp

from cachenode import hotblocks
from cachenode.httphead import parse_head
from clientlib.auth import Credentials
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import Node, local_get, wait_until
from tests.conftest import make_token, node_metric, until

SMALL = 65_536 + 7
LARGE = BS


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def test_parse_head_takes_plain_block_gets_only() -> None:
    bid = "0a" * 16
    plain = parse_head(head(f"GET /v1/blocks/{bid} HTTP/1.1", "Host: x", "Accept: */*"))
    assert plain is not None and plain.block_id == bid and not plain.close
    assert plain.range is None
    signed = parse_head(
        head(f"GET /v1/blocks/{bid}?src=s3%3A%2F%2Fb%2Fk&i=0 HTTP/1.1", "authorization: RC1 a.1.b")
    )
    assert signed is not None
    assert signed.target == f"/v1/blocks/{bid}?src=s3%3A%2F%2Fb%2Fk&i=0"
    assert signed.query == "src=s3%3A%2F%2Fb%2Fk&i=0"
    assert signed.authorization == "RC1 a.1.b"
    closing = parse_head(head(f"GET /v1/blocks/{bid} HTTP/1.1", "Connection: keep-alive, Close"))
    assert closing is not None and closing.close
    for other in (
        head(f"GET /v1/blocks/{bid} HTTP/1.0", "Host: x"),  # keep-alive rules differ
        head(f"HEAD /v1/blocks/{bid} HTTP/1.1"),
        head(f"PUT /v1/blocks/{bid} HTTP/1.1", "Content-Length: 3"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Content-Length: 3"),  # a body
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Transfer-Encoding: chunked"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Expect: 100-continue"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Connection: Upgrade", "Upgrade: h2c"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Authorization: a", "Authorization: b"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Host : x"),  # malformed: aiohttp's 400
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "X-Folded: a", " b"),  # obs-fold
        head(f"GET /v1/blocks/{bid.upper()} HTTP/1.1"),  # malformed id: aiohttp's 400
        head(f"GET /v1/blocks/{bid}/x HTTP/1.1"),
        head("GET /v1/stats HTTP/1.1"),
    ):
        assert parse_head(other) is None, other


async def cached_blocks(client, root, sizes: list[int]) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    """Objects of ``sizes`` bytes in the cluster's file:// origin, read once through the
    one-node cluster (a miss that caches them); returns (id, bytes) of each first block."""
    blocks = []
    for n, size in enumerate(sizes):
        data = os.urandom(size)
        (root / f"fast{n}").write_bytes(data)
        url = f"file://{root}/fast{n}"
        assert await client.read(url) == data
        blocks.append((client.block_ref(await client.stat(url), 0).id, data[:BS]))
    return blocks


def raw_exchange(
    node: Node, request: bytes, responses: int, half_close: bool = False
) -> list[tuple[bytes, bytes]]:
    """Send ``request`` (one or more pipelined requests) on one connection, then shut
    down the sending side if ``half_close``; read ``responses`` responses: [(head, body)].
    With ``half_close``, the server must then close the connection."""
    host, port = node.addr.rsplit(":", 1)
    out = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        buf = b""
        for _ in range(responses):
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(1 << 20)
                assert chunk, f"connection closed after {len(out)} responses"
                buf += chunk
            raw_head, _, buf = buf.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in raw_head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(buf) < length:
                chunk = sock.recv(1 << 20)
                assert chunk, "connection closed mid-body"
                buf += chunk
            out.append((raw_head, buf[:length]))
            buf = buf[length:]
        if half_close:
            assert not buf and not sock.recv(1), "the server kept a half-closed connection"
    return out


async def test_hits_are_exact_and_other_requests_are_handed_to_aiohttp_in_order(
    make_cluster, client_for, tmp_path
):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    (small, small_data), (large, large_data) = await cached_blocks(client, tmp_path, [SMALL, LARGE])
    async with aiohttp.ClientSession() as session:
        for bid, data in [(small, small_data), (large, large_data)] * 3:
            async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
                assert resp.status == 200
                assert "Server" not in resp.headers  # the fast path answered
                assert resp.headers["X-Ringcache-Result"] == "hit"
                assert await resp.read() == data

    # Pipelined on one connection: two hits, a request the fast path leaves to aiohttp
    # (an unknown block), then a hit that aiohttp answers since it has the connection.
    missing = "f" * 32
    request = b"".join(
        f"GET /v1/blocks/{bid} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for bid in (small, large, missing, small)
    )
    answers = await asyncio.to_thread(raw_exchange, node, request, 4)
    assert [h.split(b"\r\n")[0] for h, _ in answers] == [b"HTTP/1.1 200 OK"] * 2 + [
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 OK",
    ]
    assert answers[0][1] == small_data and answers[1][1] == large_data
    assert b"not cached" in answers[2][1]
    assert answers[3][1] == small_data
    assert b"Server:" not in answers[0][0] and b"Server:" not in answers[1][0]
    assert b"Server:" in answers[2][0] and b"Server:" in answers[3][0]

    # A client that half-closes after its requests still gets every answer, in full.
    both = f"GET /v1/blocks/{large} HTTP/1.1\r\n\r\nGET /v1/blocks/{small} HTTP/1.1\r\n\r\n"
    answers = await asyncio.to_thread(raw_exchange, node, both.encode(), 2, True)
    assert [body for _, body in answers] == [large_data, small_data]

    # Connection: close is honoured.
    closing = f"GET /v1/blocks/{small} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    ((closing_head, body),) = await asyncio.to_thread(raw_exchange, node, closing, 1)
    assert b"Connection: close" in closing_head and body == small_data

    # A request alone in its segment (taken without the buffer) that is not a hit is
    # handed over with its bytes, as one in the buffer is.
    alone = f"GET /v1/blocks/{missing} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    ((alone_head, body),) = await asyncio.to_thread(raw_exchange, node, alone, 1)
    assert alone_head.startswith(b"HTTP/1.1 404 Not Found") and b"Server:" in alone_head
    assert b"not cached" in body


async def test_a_request_head_seen_before_is_authorised_again_every_time(
    make_cluster, client_for, tmp_path, secret
):
    """The fast path keeps the heads it parsed, not what they were allowed: the very same
    signed head, sent again once its token has expired, is refused."""
    cluster = make_cluster(1, extra=["--token-file", str(secret)])
    node = cluster.nodes[0]
    operator = await client_for(cluster, token_file=str(secret), memory_cache_bytes=0)
    ((bid, data),) = await cached_blocks(operator, tmp_path, [SMALL])
    url = f"file://{tmp_path}/fast0"
    query = operator.block_ref(await operator.stat(url), 0).query()
    short = Credentials.from_file(await make_token(cluster, secret, url, "--ttl", "2s"))
    target = f"/v1/blocks/{bid}?{query}"
    auth = short.headers("GET", target, node=node.node_id)["Authorization"]
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
    ((first, body),) = await asyncio.to_thread(raw_exchange, node, request, 1)
    assert first.startswith(b"HTTP/1.1 200 OK") and body == data
    assert b"Server:" not in first  # the fast path answered, and keeps the head
    await asyncio.sleep(3)  # the token expires; the signature is still recent enough
    ((again, _),) = await asyncio.to_thread(raw_exchange, node, request, 1)
    assert again.startswith(b"HTTP/1.1 401 ")
    unauthorized = 'reason="unauthorized"'
    assert node_metric(node, "ringcache_requests_refused_total", unauthorized) == 1


async def test_fast_hits_are_counted_in_the_metrics(make_cluster, client_for, tmp_path):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    ((bid, data),) = await cached_blocks(client, tmp_path, [SMALL])
    hits = node_metric(node, "ringcache_block_hits_total")
    hit_bytes = node_metric(node, "ringcache_served_bytes_total", 'result="hit"')
    timed = node_metric(node, "ringcache_request_seconds_count", 'op="get_hit"')
    queued = node_metric(node, "ringcache_tenant_queue_seconds_count", 'tenant="operator"')
    async with aiohttp.ClientSession() as session:
        for _ in range(25):
            async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
                assert "Server" not in resp.headers
                assert await resp.read() == data
    assert node_metric(node, "ringcache_block_hits_total") == hits + 25
    assert (
        node_metric(node, "ringcache_served_bytes_total", 'result="hit"') == hit_bytes + 25 * SMALL
    )
    assert node_metric(node, "ringcache_request_seconds_count", 'op="get_hit"') == timed + 25
    assert (
        node_metric(node, "ringcache_tenant_queue_seconds_count", 'tenant="operator"')
        == queued + 25
    )
    stats = json.loads(await asyncio.to_thread(local_get, node.url + "/v1/stats"))
    assert stats["hits"] == hits + 25


async def test_a_small_block_served_from_memory_is_still_checked(
    make_cluster, client_for, tmp_path
):
    """With the memory tier off, a corrupted file is caught on the next serve; with it on,
    the verified copy in memory is served and the corrupt file is not needed."""
    for memory, expect_refetch in (("0", True), ("64MiB", False)):
        cluster = make_cluster(1, extra=["--memory-cache", memory])
        node = cluster.nodes[0]
        client = await client_for(cluster, memory_cache_bytes=0)
        ((bid, data),) = await cached_blocks(client, tmp_path, [SMALL])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
                assert await resp.read() == data
            (path,) = node.cache_dir.glob(f"**/blocks/*/{bid}.*")
            path.write_bytes(b"\0" * SMALL)  # same length, wrong bytes
            async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
                body = await resp.read()
        if expect_refetch:
            assert resp.status == 404  # dropped: a lookup by id alone cannot refetch
        else:
            assert resp.status == 200 and body == data
        assert body != b"\0" * SMALL
        cluster.stop()  # the next round's node takes the same cache dir


async def test_a_large_block_from_memory_is_read_from_its_file_and_checked_when_due(
    make_cluster, client_for, tmp_path
):
    """A large block is copied into memory at its second whole-block hit (the copy is
    made in the store's pool; a hit meanwhile waits for it) and sent from that verified
    copy, so a file corrupted after the check does not reach a client; once
    the copy has left the memory tier (LRU) or is older than --memory-recheck, the file
    is read and checked again, and dropped."""
    cluster = make_cluster(1, extra=["--memory-cache", "6MiB", "--memory-recheck", "1"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    blocks = await cached_blocks(client, tmp_path, [3 * 1024 * 1024, LARGE])
    (first, first_data), (second, second_data) = blocks

    async def get(session: aiohttp.ClientSession, bid: str) -> tuple[int, bytes]:
        """The status and body of a GET; a 404's JSON error body as b"404"."""
        async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
            body = await resp.read()
            if resp.status == 404:
                assert json.loads(body)["error"]
                return 404, b"404"
            return resp.status, body

    def corrupt(bid: str, nbytes: int) -> None:
        (path,) = node.cache_dir.glob(f"**/blocks/*/{bid}.*")
        path.write_bytes(b"\0" * nbytes)  # same length, wrong bytes, in place

    async with aiohttp.ClientSession() as session:
        assert await get(session, first) == (200, first_data)  # checked, only remembered
        assert await get(session, first) == (200, first_data)  # checked, kept in memory
        corrupt(first, len(first_data))
        assert await get(session, first) == (200, first_data)  # the copy checked before
        assert await get(session, second) == (200, second_data)
        assert await get(session, second) == (200, second_data)  # copied, in the pool
        # From the copy (a hit waits for it while it is being made): the first is out.
        assert await get(session, second) == (200, second_data)
        assert await get(session, first) == (404, b"404")  # checked again: dropped
        corrupt(second, len(second_data))
        assert await get(session, second) == (200, second_data)
        await asyncio.sleep(1.2)  # past --memory-recheck
        assert await get(session, second) == (404, b"404")
    assert not list(node.cache_dir.glob("**/blocks/*/*"))


def test_a_block_is_hot_by_concurrency_or_by_rate_within_a_window(monkeypatch) -> None:
    """``HotBlocks``, the X-Ringcache-Hot signal of both hit paths: 4 GETs of a block in
    flight, or 16 in one window, and the count starts over with the next window (the
    clock is the one stand-in: a unit of one class)."""
    clock = [1000.0]
    monkeypatch.setattr(hotblocks.time, "monotonic", lambda: clock[0])
    hot = hotblocks.HotBlocks()
    assert [hot.begin("a") for _ in range(4)] == [False, False, False, True]
    for _ in range(4):
        hot.end("a")
    clock[0] += hotblocks.HOT_WINDOW
    one_at_a_time = []
    for _ in range(hotblocks.HOT_REQUESTS):
        one_at_a_time.append(hot.begin("b"))
        hot.end("b")
    assert one_at_a_time == [False] * (hotblocks.HOT_REQUESTS - 1) + [True]
    assert not hot.begin("a")  # another block's count is its own
    hot.end("a")
    clock[0] += hotblocks.HOT_WINDOW
    assert not hot.begin("b")  # a new window


def test_a_get_answered_within_one_call_counts_in_the_window_and_stays_out_of_flight(
    monkeypatch,
) -> None:
    """``HotBlocks.hit``, the fast path's small hits: each counts in the window as a GET
    that began does, is hot with the GETs already in flight as if it were one more, and
    leaves nothing in flight behind it."""
    clock = [1000.0]
    monkeypatch.setattr(hotblocks.time, "monotonic", lambda: clock[0])
    hot = hotblocks.HotBlocks()
    hits = [hot.hit("a", clock[0]) for _ in range(hotblocks.HOT_REQUESTS)]
    assert hits == [False] * (hotblocks.HOT_REQUESTS - 1) + [True]
    clock[0] += hotblocks.HOT_WINDOW
    assert not hot.hit("a", clock[0])  # a new window; and no GET of "a" left in flight
    for _ in range(hotblocks.HOT_CONCURRENCY - 1):
        assert not hot.begin("b")
    assert hot.hit("b", clock[0])  # one more than those in flight
    clock[0] += hotblocks.HOT_WINDOW
    for _ in range(hotblocks.HOT_CONCURRENCY - 1):
        hot.end("b")
    assert [hot.begin("b") for _ in range(hotblocks.HOT_CONCURRENCY)][-1]
    assert not hot.hit("c", clock[0])


def _out_of_page_cache(node: Node, bid: str) -> None:
    """Push a block's file out of the page cache, and prove it is out: a read that must
    not wait for the disk fails. The kernel skips pages that are busy at that moment (a
    node thread reading them, writeback), so the push is repeated until it took."""
    (path,) = node.cache_dir.glob(f"**/blocks/*/{bid}.*")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)

        def pushed_out() -> bool:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            try:
                os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
            except BlockingIOError:
                return True
            return False

        wait_until(pushed_out, 10, f"{path} out of the page cache")
    finally:
        os.close(fd)


async def test_a_hit_that_waits_for_the_disk_keeps_the_connection_on_the_fast_path(
    make_cluster, client_for, tmp_path
):
    """A block whose file is out of the page cache (warmed with O_DIRECT, or dropped by
    the kernel) is read and checked in the node's pool and sent by the fast path, a range
    of it or all of it, and the connection stays on the fast path for the next request;
    a bad file out of the page cache is still dropped and its request handed to aiohttp."""
    cluster = make_cluster(1, extra=["--memory-cache", "0"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    (large, data), (bad, bad_data) = await cached_blocks(client, tmp_path, [LARGE, LARGE])

    _out_of_page_cache(node, large)
    request = "".join(
        f"GET /v1/blocks/{large} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
        for extra in ("Range: bytes=1000-70999\r\n", "", "Range: bytes=5-9\r\n")
    )
    answers = await asyncio.to_thread(raw_exchange, node, request.encode(), 3)
    assert [h.split(b"\r\n")[0] for h, _ in answers] == [
        b"HTTP/1.1 206 Partial Content",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 206 Partial Content",
    ]
    assert [body for _, body in answers] == [data[1000:71000], data, data[5:10]]
    assert b"Content-Range: bytes 1000-70999/%d" % LARGE in answers[0][0]
    assert all(b"Server:" not in h for h, _ in answers)  # all three on the fast path

    (path,) = node.cache_dir.glob(f"**/blocks/*/{bad}.*")
    path.write_bytes(b"\0" * len(bad_data))
    _out_of_page_cache(node, bad)
    request = "".join(f"GET /v1/blocks/{b} HTTP/1.1\r\nHost: x\r\n\r\n" for b in (bad, large))
    (dropped, after) = await asyncio.to_thread(raw_exchange, node, request.encode(), 2)
    assert dropped[0].startswith(b"HTTP/1.1 404") and b"Server:" in dropped[0]
    assert after[1] == data and b"Server:" in after[0]  # aiohttp has the connection now
    assert not path.exists()


def _hang_up_mid_body(node: Node, bid: str) -> None:
    """Ask for a large block three times on one connection with a small receive buffer,
    read a little of the first body, then hang up with the rest unread (the node's socket
    is full by then: more than its largest send buffer was asked for, so it is sending the
    rest from a writability callback)."""
    host, port = node.addr.rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        sock.sendall(f"GET /v1/blocks/{bid} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 3)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST


async def test_a_large_body_given_up_mid_way_frees_its_slot_and_files(
    make_cluster, client_for, tmp_path
):
    """A client that hangs up while the rest of a large block is being sent: the node
    closes the block's file and its socket's duplicate, and gives back the serving slot
    (with one slot, a leak would hand every later hit to aiohttp)."""
    cluster = make_cluster(1, extra=["--serve-slots", "1"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    ((large, data),) = await cached_blocks(client, tmp_path, [LARGE])

    async def fast_get() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{node.url}/v1/blocks/{large}") as resp,
        ):
            assert "Server" not in resp.headers  # the fast path answered
            assert await resp.read() == data

    for _ in range(3):  # the block's copy is in the memory tier from its second hit on
        await fast_get()
    fds = os.listdir(f"/proc/{node.pid}/fd")
    for _ in range(5):
        await asyncio.to_thread(_hang_up_mid_body, node, large)
    await until(lambda: len(os.listdir(f"/proc/{node.pid}/fd")) <= len(fds))
    await fast_get()
