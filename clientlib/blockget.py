"""The HTTP client for block GETs: each answer received straight into the block's buffer.

Every block a client reads from a node is one ``GET /v1/blocks/<id>`` answered with a
``Content-Length`` body of up to a block. Through a general HTTP client the body is read
into bytes objects, sliced by the parser and joined again; here the connection is an
``asyncio.BufferedProtocol`` that, once the head is parsed, hands the kernel the rest of
the block's own buffer to receive into: one copy per block, which at a mount's few
hundred MB/s is the difference that matters (figures: ``loadtest/results/mount.md``).

While a body comes over plain TCP, the socket wakes the loop only once a
:data:`BODY_WAKE` step of it (or all that is left) has arrived (``SO_RCVLOWAT``), not
for every segment: a 4 MiB block over loopback was otherwise some sixty wakeups of
mountd's event loop, each a ``recv`` and a protocol callback.

It speaks exactly the HTTP/1.1 a cache node answers: one request at a time on a
connection, a status line, headers and a ``Content-Length`` body; connections are kept
for the next request unless the node says ``Connection: close``. Anything else (a
chunked or unsized body, a head over 64 KiB, bytes past the body) is a
:class:`NodeProtocolError` and the connection is dropped. Everything that is not a
block GET (fills, presence checks, stats) stays on aiohttp.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import ssl as ssl_module
import termios
from dataclasses import dataclass

from clientlib.buffers import unfilled_aligned

__all__ = ["BlockGetClient", "NodeProtocolError", "NodeReply"]

#: Largest response head accepted, and the first buffer a head is read into.
MAX_HEAD = 64 * 1024
_FIRST_HEAD_BUFFER = 16 * 1024
#: Idle connections kept per node; more are closed when they come back.
MAX_IDLE_PER_PEER = 32
#: Bytes of a body the socket holds before it wakes the loop (``SO_RCVLOWAT``). With
#: 1 MiB, mountd and the nodes spent 1,425 us of CPU per MB of a sequential read (tier
#: off, the nodes' files in their page cache) against 1,686-1,695 without, and 256 KiB
#: saved half as much (``loadtest/results/mount.md``, tenth session). A node sending
#: less than a step per read timeout is still seen to be sending: the watchdog counts
#: the bytes the socket holds (:meth:`_Connection.progress`).
BODY_WAKE = 1024 * 1024


class NodeProtocolError(ConnectionError):
    """The node's answer was not the HTTP this client reads (the connection is dropped)."""


@dataclass(frozen=True)
class NodeReply:
    """One answer: its status, its headers (names lower-cased) and its body."""

    status: int
    headers: dict[str, str]
    body: memoryview


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection to a node, reading one answer at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None  # plain TCP only: see _wake_at
        self._wake = 1
        self.lost = False
        self._head = bytearray(_FIRST_HEAD_BUFFER)
        self._head_len = 0
        self._body: memoryview | None = None
        self._got = 0
        self._reply: asyncio.Future[NodeReply] | None = None
        self._answered: asyncio.Event | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self.keep_alive = True

    # -- the caller's side ------------------------------------------------------------

    def send(self, request: bytes, answered: asyncio.Event | None) -> asyncio.Future[NodeReply]:
        """Write one request; the future is its reply."""
        assert self.transport is not None and self._reply is None
        self._reply = asyncio.get_running_loop().create_future()
        self._answered = answered
        self._head_len = 0
        self._body = None
        self._got = 0
        self.transport.write(request)
        return self._reply

    @property
    def received(self) -> int:
        """Bytes of the current answer received so far (to tell slow from stuck)."""
        return self._head_len + self._got

    def progress(self) -> int:
        """:attr:`received` and the bytes of the answer the socket holds and has not yet
        handed over (``FIONREAD``): what tells a slow node from a stuck one."""
        if self._sock is None or self._wake == 1:
            return self.received
        queued = array.array("i", [0])
        try:
            fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, queued)
        except OSError:
            return self.received
        return self.received + queued[0]

    @property
    def idle(self) -> bool:
        return self._reply is None and not self.lost

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    # -- the protocol's side ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        if transport.get_extra_info("sslcontext") is None:
            self._sock = transport.get_extra_info("socket")

    def _wake_at(self, nbytes: int) -> None:
        """Have the socket wake the loop once ``nbytes`` (at most :data:`BODY_WAKE`) are
        there. Plain TCP only: under TLS the bytes left of a body and the bytes still to
        come on the socket differ (a record's remainder may be all that comes), and a
        wake set past what comes would wait for the watchdog."""
        nbytes = max(1, min(nbytes, BODY_WAKE))
        if self._sock is None or nbytes == self._wake:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            # Woken for every segment from here on, as without it; and not kept, in
            # case the socket's wake is left above 1 for the next answer's head.
            self._sock = None
            self.keep_alive = False
            return
        self._wake = nbytes

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body[self._got :]
        if self._head_len == len(self._head):
            # A new buffer, not a resize: the loop may still hold a view of the old one.
            self._head = self._head + bytes(len(self._head))
        return memoryview(self._head)[self._head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._reply is None:
            self._fail(NodeProtocolError("bytes from the node with no request pending"))
            return
        if self._body is not None:
            self._got += nbytes
        else:
            self._head_len += nbytes
            end = self._head.find(b"\r\n\r\n", 0, self._head_len)
            if end < 0:
                if self._head_len >= MAX_HEAD:
                    self._fail(NodeProtocolError(f"response head over {MAX_HEAD} bytes"))
                return
            try:
                length = self._parse_head(bytes(self._head[:end]))
            except (NodeProtocolError, ValueError, UnicodeDecodeError) as exc:
                self._fail(NodeProtocolError(f"bad response head: {exc}"))
                return
            start = end + 4
            early = self._head_len - start
            if early > length:
                self._fail(NodeProtocolError("more bytes than the Content-Length"))
                return
            # Not zeroed (clientlib.buffers): the body is handed out only once whole.
            # Page-aligned, so an O_DIRECT write of it (write_block) needs no aligned
            # copy first; the local tier, written so in session 5, now writes through
            # the page cache (mount.md), so nothing relies on that today.
            self._body = unfilled_aligned(length, 4096)
            self._body[:early] = self._head[start : self._head_len]
            self._got = early
            if self._answered is not None:
                self._answered.set()
        left = len(self._body) - self._got
        if len(self._body) > BODY_WAKE:  # a range read's body comes in one or two wakes
            self._wake_at(left)  # at the end, 1: the next head wakes at its first byte
        if not left:
            self._finish()

    def _parse_head(self, head: bytes) -> int:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise NodeProtocolError(f"not HTTP/1.x: {lines[0][:80]!r}")
        status = rest[:3]
        if not (status.isascii() and status.isdigit() and len(status) == 3):
            raise NodeProtocolError(f"bad status line {lines[0][:80]!r}")
        self._status = int(status)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise NodeProtocolError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers or "content-length" not in headers:
            raise NodeProtocolError("a body without Content-Length")
        # ASCII digits only: int() also takes "+5", " 5", "1_0" and "٣".
        declared = headers["content-length"]
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 20:
            raise NodeProtocolError(f"bad Content-Length {declared[:40]!r}")
        length = int(declared)
        self._headers = headers
        self.keep_alive = version == "HTTP/1.1" and headers.get("connection") != "close"
        return length

    def _finish(self) -> None:
        reply, self._reply = self._reply, None
        assert reply is not None and self._body is not None
        body, self._body = self._body, None
        self._head_len = 0
        if len(self._head) > _FIRST_HEAD_BUFFER:
            self._head = bytearray(_FIRST_HEAD_BUFFER)
        if not reply.done():
            reply.set_result(NodeReply(self._status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        reply, self._reply = self._reply, None
        self.close()
        if reply is not None and not reply.done():
            reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionResetError(f"node closed the connection: {exc or 'EOF'}"))

    def eof_received(self) -> bool:
        return False  # close our side too; a pending answer fails in connection_lost


class _Watchdog:
    """Fails a reply with :class:`TimeoutError` once its connection has received nothing
    for a whole ``timeout`` (checked every ``timeout`` seconds, so after one to two of
    them): one timer re-armed while bytes arrive, rather than a wait with a timeout per
    read (most answers come within a millisecond). Bytes the socket holds below its wake
    count as arrived (:meth:`_Connection.progress`)."""

    def __init__(
        self, conn: _Connection, reply: asyncio.Future[NodeReply], timeout: float, peer: str
    ) -> None:
        self._conn, self._reply, self._timeout, self._peer = conn, reply, timeout, peer
        self._seen = -1
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        if self._reply.done():
            return
        progress = self._conn.progress()
        if progress == self._seen:  # nothing for a whole timeout: stuck
            self._reply.set_exception(
                TimeoutError(f"no bytes from {self._peer} in {self._timeout}s")
            )
            return
        self._seen = progress
        self._timer = self._loop.call_later(self._timeout, self._check)

    def cancel(self) -> None:
        self._timer.cancel()


class BlockGetClient:
    """Pooled keep-alive connections to the cache nodes for block GETs."""

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._ssl = ssl
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._peers: dict[str, tuple[tuple[str, str, int], str]] = {}
        self._closed = False

    async def get(
        self,
        base_url: str,
        path_qs: str,
        headers: dict[str, str],
        answered: asyncio.Event | None = None,
    ) -> NodeReply:
        """``GET path_qs`` from the node at ``base_url`` (``http[s]://host:port``).

        ``answered`` is set when the response head arrives. Raises :class:`TimeoutError`
        when the node sends nothing for ``read_timeout`` (or takes ``total_timeout``),
        and :class:`ConnectionError` when it cannot be reached or breaks the answer.
        """
        key, addr = self._peer(base_url)
        lines = [f"GET {path_qs} HTTP/1.1", f"Host: {addr}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        async with asyncio.timeout(self._total_timeout):
            conn = self._reuse(key)
            if conn is not None:
                try:
                    return await self._exchange(key, conn, request, answered)
                except ConnectionError:
                    if conn.received:
                        raise
                    # The node closed an idle connection as we reused it: a fresh one.
            return await self._exchange(key, await self._connect(key), request, answered)

    def _peer(self, base_url: str) -> tuple[tuple[str, str, int], str]:
        """The pool key (scheme, host, port) and the ``Host`` of a node's base URL,
        parsed once per node rather than per request."""
        peer = self._peers.get(base_url)
        if peer is None:
            scheme, _, addr = base_url.partition("://")
            host, _, port_text = addr.rpartition(":")
            peer = self._peers[base_url] = ((scheme, host.strip("[]"), int(port_text)), addr)
        return peer

    async def _exchange(
        self,
        key: tuple[str, str, int],
        conn: _Connection,
        request: bytes,
        answered: asyncio.Event | None,
    ) -> NodeReply:
        reply = conn.send(request, answered)
        watchdog = _Watchdog(conn, reply, self._read_timeout, f"{key[1]}:{key[2]}")
        try:
            result = await reply
        except BaseException:
            conn.close()  # mid-answer: the connection cannot be reused
            reply.cancel()
            raise
        finally:
            watchdog.cancel()
        if conn.keep_alive and not conn.lost:
            self._keep(key, conn)
        else:
            conn.close()
        return result

    def _reuse(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle:
                return conn
        return None

    def _keep(self, key: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if not self._closed and len(idle) < MAX_IDLE_PER_PEER:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._ssl if scheme == "https" else None
        if scheme == "https" and tls is None:
            tls = ssl_module.create_default_context()
        async with asyncio.timeout(self._connect_timeout):
            transport, conn = await loop.create_connection(
                _Connection, host, port, ssl=tls, server_hostname=host if tls else None
            )
        # uvloop calls connection_made on the next loop turn, after this returns.
        conn.transport = transport
        return conn

    def close(self) -> None:
        """Close every idle connection (those in use close when their answer ends)."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
