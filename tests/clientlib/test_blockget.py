"""BlockGetClient against real HTTP servers on loopback: aiohttp's, and raw ones that misbehave.

The read path tests cover block GETs from real cache nodes through it; these cover what a
node rarely does: closing a kept connection, chunked or oversized answers, going silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import ssl
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from clientlib.blockget import (
    BODY_WAKE,
    MAX_HEAD,
    BlockGetClient,
    NodeProtocolError,
    _Connection,
)
from tests.conftest import self_signed_cert

BODY = os.urandom(3 * 1024 * 1024 + 17)


def on_both_loops(body: Callable[[], Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """The test ``body`` run on asyncio's loop and on uvloop's: the daemons run on uvloop,
    whose transports differ (``create_connection``'s transport, buffer protocols)."""

    @pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
    def test(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        run(body())

    test.__doc__ = body.__doc__
    return test


@contextlib.asynccontextmanager
async def node_server(tls: ssl.SSLContext | None = None):
    """An aiohttp server answering like a node; records the client ports it served."""
    connections: set[int] = set()

    async def block(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        connections.add(request.transport.get_extra_info("peername")[1])
        if request.query.get("close"):
            return web.Response(body=BODY, headers={"Connection": "close"})
        if request.query.get("chunked"):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"abc")
            await response.write_eof()
            return response
        if request.query.get("status"):
            return web.Response(status=int(request.query["status"]), text="no such block")
        return web.Response(body=BODY, headers={"X-Seen": request.headers.get("X-Sig", "")})

    app = web.Application()
    app.router.add_get("/v1/blocks/{id}", block)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", connections
    await runner.cleanup()


async def raw_server(handler) -> tuple[asyncio.AbstractServer, str]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def raw_node(handler, read_timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """A client and the URL of a raw server answering with ``handler``; both closed."""
    server, url = await raw_server(handler)
    wire = BlockGetClient(1.0, read_timeout, 30.0)
    try:
        yield wire, url
    finally:
        wire.close()
        server.close()


async def refused(handler, error: type[Exception], read_timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """A GET from a raw server answering with ``handler`` raises ``error``."""
    async with raw_node(handler, read_timeout) as (wire, url):
        with pytest.raises(error):
            await wire.get(url, "/v1/blocks/a", {})


@on_both_loops
async def test_bodies_are_exact_and_connections_are_kept() -> None:
    async with node_server() as (url, connections):
        wire = BlockGetClient(1.0, 5.0, 30.0)
        answered = asyncio.Event()
        reply = await wire.get(url, "/v1/blocks/a?x=1", {"X-Sig": "s1"}, answered)
        assert answered.is_set()
        assert reply.status == 200 and reply.body == BODY and reply.headers["x-seen"] == "s1"
        for _ in range(5):
            assert (await wire.get(url, "/v1/blocks/a", {})).body == BODY
        assert len(connections) == 1  # one kept-alive connection for six requests
        replies = await asyncio.gather(*(wire.get(url, "/v1/blocks/b", {}) for _ in range(4)))
        assert all(r.body == BODY for r in replies)
        assert len(connections) == 4  # concurrent requests take a connection each
        wire.close()


@on_both_loops
async def test_a_body_received_in_pieces_into_reused_memory_is_exact() -> None:
    """A body's buffer is not zeroed (``clientlib.buffers``): memory that held other bytes
    (freed buffers of about the same size, all 0xAA; below malloc's mmap threshold, so the
    heap hands them out again) is received into, piece by piece, and a reply holds
    only the node's bytes."""
    body = os.urandom(100 * 1024)
    dirty = [bytearray(b"\xaa" * len(body)) for _ in range(4)]
    del dirty

    async def in_pieces(reader, writer):  # type: ignore[no-untyped-def]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for start in range(0, len(body), 16 * 1024):
            writer.write(body[start : start + 16 * 1024])
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.close()

    async with raw_node(in_pieces) as (wire, url):
        reply = await wire.get(url, "/v1/blocks/a", {})
        assert reply.body == body
        # Page-aligned, as blockget promises (an O_DIRECT write needs no copy of it).
        assert ctypes.addressof(ctypes.c_char.from_buffer(reply.body)) % 4096 == 0


@on_both_loops
async def test_error_statuses_come_back_with_their_body() -> None:
    async with node_server() as (url, _):
        wire = BlockGetClient(1.0, 5.0, 30.0)
        reply = await wire.get(url, "/v1/blocks/a?status=404", {})
        assert reply.status == 404 and bytes(reply.body) == b"no such block"
        assert (await wire.get(url, "/v1/blocks/a", {})).body == BODY  # the connection still works
        wire.close()


@on_both_loops
async def test_connection_close_is_honoured() -> None:
    async with node_server() as (url, connections):
        wire = BlockGetClient(1.0, 5.0, 30.0)
        for _ in range(3):
            assert (await wire.get(url, "/v1/blocks/a?close=1", {})).body == BODY
        assert len(connections) == 3
        wire.close()


@on_both_loops
async def test_chunked_answers_are_refused() -> None:
    async with node_server() as (url, _):
        wire = BlockGetClient(1.0, 5.0, 30.0)
        with pytest.raises(NodeProtocolError, match="Content-Length"):
            await wire.get(url, "/v1/blocks/a?chunked=1", {})
        assert (await wire.get(url, "/v1/blocks/a", {})).body == BODY
        wire.close()


@on_both_loops
async def test_a_kept_connection_the_node_closed_is_replaced() -> None:
    """The node may close an idle kept connection just as it is reused: the request goes
    again on a new connection, once, because the node had not answered any of it."""
    accepted = 0

    async def one_answer_per_connection(reader, writer):  # type: ignore[no-untyped-def]
        nonlocal accepted
        accepted += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()  # no Connection: close header: the client thinks it is kept

    async with raw_node(one_answer_per_connection) as (wire, url):
        for _ in range(3):
            assert bytes((await wire.get(url, "/v1/blocks/a", {})).body) == b"hello"
            await asyncio.sleep(0.05)
    assert accepted == 3


@on_both_loops
async def test_a_node_that_breaks_off_an_answer_is_an_error_not_a_retry() -> None:
    async def half_a_body(reader, writer):  # type: ignore[no-untyped-def]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    await refused(half_a_body, ConnectionError)


@on_both_loops
async def test_a_silent_node_times_out_and_a_slow_one_does_not() -> None:
    async def silent(reader, writer):  # type: ignore[no-untyped-def]
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    async def trickle(reader, writer):  # type: ignore[no-untyped-def]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"slowly":  # a byte every 0.1 s: 0.6 s in all, over the 0.25 s limit
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()

    await refused(silent, TimeoutError, read_timeout=0.25)
    async with raw_node(trickle, 0.25) as (wire, url):
        assert bytes((await wire.get(url, "/v1/blocks/a", {})).body) == b"slowly"


def _paced(*bodies: bytes, piece: int, pause: float):  # type: ignore[no-untyped-def]
    """A raw node answering its connection's requests with ``bodies`` in turn, each
    ``piece`` bytes every ``pause`` seconds."""

    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        for body in bodies:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            for start in range(0, len(body), piece):
                writer.write(body[start : start + piece])
                await writer.drain()
                await asyncio.sleep(pause)
        await reader.read()  # open until the client closes: no EOF wakes it early
        writer.close()

    return handler


@on_both_loops
async def test_a_block_wakes_the_loop_once_a_step_has_come_not_per_segment() -> None:
    """A 4 MiB block sent in 64 KiB pieces, each on its own (64 sends): the socket
    hands it over in steps of about BODY_WAKE (a handful of wakes, not one per piece);
    then a small answer on the same connection comes at once (its wake is back at the
    first byte, or it would wait for more bytes than it has)."""
    wakes: list[int] = []
    update = _Connection.buffer_updated

    def counted(self: _Connection, nbytes: int) -> None:
        wakes.append(nbytes)
        update(self, nbytes)

    block, small = os.urandom(4 * 1024 * 1024), os.urandom(1000)
    async with raw_node(_paced(block, small, piece=64 * 1024, pause=0.002)) as (wire, url):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_Connection, "buffer_updated", counted)
            assert (await wire.get(url, "/v1/blocks/a", {})).body == block
        # The head, then steps: a step can come a little early when the socket's
        # memory runs short (seen: 960 KiB), so up to twice as many.
        assert len(wakes) <= 2 * (len(block) // BODY_WAKE) + 2, wakes
        assert (await wire.get(url, "/v1/blocks/b", {})).body == small


@on_both_loops
async def test_a_node_slower_than_a_step_a_timeout_is_slow_not_stuck() -> None:
    """100 KiB every 0.05 s of a 1.5 MiB block: the socket holds less than a step for
    longer than the 0.25 s read timeout, and the bytes it holds count as arrived."""
    block = os.urandom(1536 * 1024)
    async with raw_node(_paced(block, piece=100 * 1024, pause=0.05), 0.25) as (wire, url):
        assert (await wire.get(url, "/v1/blocks/a", {})).body == block


@on_both_loops
async def test_malformed_answers_are_refused() -> None:
    answers = [
        b"SPDY/3 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0_5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: \u0665\r\n\r\nhello".encode(),
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nhe",
        b"HTTP/1.1 2_0 OK\r\nContent-Length: 1\r\n\r\nx",
    ]
    for answer in answers:

        async def send(reader, writer, answer=answer):  # type: ignore[no-untyped-def]
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        await refused(send, NodeProtocolError)


@on_both_loops
async def test_an_unreachable_node_is_a_connection_error() -> None:
    server, url = await raw_server(lambda r, w: None)
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionError):
        await BlockGetClient(1.0, 5.0, 30.0).get(url, "/v1/blocks/a", {})


@on_both_loops
async def test_answers_over_tls_are_exact() -> None:
    with tempfile.TemporaryDirectory() as temp:
        pem, key = self_signed_cert(Path(temp))
        server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_side.load_cert_chain(pem, key)
        client_side = ssl.create_default_context(cafile=str(pem))
    async with node_server(server_side) as (url, connections):
        wire = BlockGetClient(1.0, 5.0, 30.0, client_side)
        for _ in range(3):
            assert (await wire.get(url, "/v1/blocks/a", {})).body == BODY
        assert len(connections) == 1
        wire.close()
        with pytest.raises(ssl.SSLError):  # a client that does not trust the node
            await BlockGetClient(1.0, 5.0, 30.0).get(url, "/v1/blocks/a", {})
