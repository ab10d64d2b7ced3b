"""A GET's body received with a raised low-water mark (:mod:`clientlib.origin.s3recv`):
every byte, few wakeups, no wait past the body's end, the connection reusable after."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clientlib.origin.s3recv import receive_into
from testkit.certs import issue_cert, make_ca

BODY = os.urandom(4 * 1024 * 1024 + 12_345)
BURST = 64 * 1024  # the server paces the body in bursts of this, as a shaped origin does


class _Paced(socketserver.StreamRequestHandler):
    """Answers each GET with BODY in bursts a millisecond apart; ``/short`` sends only half
    of it and closes the connection."""

    def handle(self) -> None:
        while line := self.rfile.readline():
            path = line.split()[1].decode()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
            self.wfile.write(head)
            body = BODY[: len(BODY) // 2] if path == "/short" else BODY
            for start in range(0, len(body), BURST):
                self.wfile.write(body[start : start + BURST])
                self.wfile.flush()
                time.sleep(0.001)
            if path == "/short":
                return


@pytest.fixture(params=["http", "https"])
def server(request, tmp_path: Path) -> Iterator[tuple[str, int, ssl.SSLContext | None]]:
    """A paced server on 127.0.0.1, plain or TLS; its scheme, port and the client's TLS
    context."""
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Paced)
    srv.daemon_threads = True
    client_tls = None
    if request.param == "https":
        ca = make_ca(tmp_path)
        cert, key = issue_cert(ca, tmp_path, "paced")
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)
        srv.socket = server_tls.wrap_socket(srv.socket, server_side=True)
        client_tls = ssl.create_default_context(cafile=str(ca[0]))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield request.param, srv.server_address[1], client_tls
    srv.shutdown()
    srv.server_close()


def _connect(server: tuple[str, int, ssl.SSLContext | None]) -> http.client.HTTPConnection:
    scheme, port, tls = server
    if scheme == "https":
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def test_a_paced_body_arrives_whole_in_few_wakeups_and_the_connection_stays_usable(
    server, monkeypatch
):
    reads = []
    raw_readinto = socket.SocketIO.readinto

    def counted(self, b):  # type: ignore[no-untyped-def]
        n = raw_readinto(self, b)
        reads.append(n)
        return n

    monkeypatch.setattr(socket.SocketIO, "readinto", counted)
    conn = _connect(server)
    try:
        buf = memoryview(bytearray(len(BODY)))
        for _ in range(2):  # the second answer's head is read with the mark back at 1
            reads.clear()
            conn.request("GET", "/block")
            resp = conn.getresponse()
            # A wait for bytes not coming would run into the 10 s timeout (raises).
            assert receive_into(resp, conn.sock, buf) == len(BODY)
            assert bytes(buf) == BODY and resp.isclosed()
            assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
            # A wakeup per burst would be ~66 reads (plain; more with TLS records).
            if server[0] == "http":
                assert len(reads) <= 20, reads
    finally:
        conn.close()


@contextlib.contextmanager
def _got(
    server: tuple[str, int, ssl.SSLContext | None], path: str
) -> Iterator[tuple[http.client.HTTPConnection, http.client.HTTPResponse, memoryview]]:
    """A GET of ``path`` with its head read, and a buffer for a body of ``BODY``'s size."""
    conn = _connect(server)
    try:
        conn.request("GET", path)
        yield conn, conn.getresponse(), memoryview(bytearray(len(BODY)))
    finally:
        conn.close()


def test_a_body_cut_short_returns_what_came_without_waiting_for_the_rest(server):
    """The server hangs up halfway: the receive ends there (a wait for the rest would
    run into the connection's 10 s timeout, which raises)."""
    with _got(server, "/short") as (conn, resp, buf):
        try:
            done = receive_into(resp, conn.sock, buf)
        except http.client.IncompleteRead:  # how http.client reports a body cut short
            done = -1
        assert done < len(BODY)


def test_without_a_socket_it_reads_as_before(server):
    with _got(server, "/block") as (_, resp, buf):
        assert receive_into(resp, None, buf) == len(BODY) and bytes(buf) == BODY
