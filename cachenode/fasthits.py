"""The hit fast path: block GETs that are cache hits, answered without aiohttp.

aiohttp spends several times what nginx does on a small hit (request object, routing,
middleware, response object), and most of a hot node's requests are exactly that:
``GET /v1/blocks/<id>`` for a block in the page cache. So each connection starts on
:class:`FastHitProtocol`, which reads request heads itself (:mod:`cachenode.httphead`) and
answers the ones it can answer at once and in full:

- the head is a plain ``GET /v1/blocks/<id>[?query] HTTP/1.1`` with no body, no upgrade,
  no ``Expect`` and no ``Range``;
- the hit core (:class:`HitCore`, shared with aiohttp's routes) authorises it, and its
  answer needs no proof;
- a fair-share slot is free with nobody queueing (:class:`FairScheduler`);
- the block is indexed, and its checksum matches: checked at once when all of it is in
  the page cache or the memory tier (:meth:`BlockStore.read_now`, which never waits for
  the disk), else read and checked in the store's pool first
  (:meth:`BlockStore.open_block`, as aiohttp's route does) while the connection's next
  requests wait, so that a connection is not lost to aiohttp at the first hit whose
  file is out of the page cache (a block warmed with ``O_DIRECT``, or one the kernel
  dropped); a file found bad then is dropped and its request handed over (a miss).

Anything else, from the first request that fails one of these on, is handed to aiohttp
with the bytes not yet consumed: the connection's protocol becomes aiohttp's
``RequestHandler``, which answers the request as if it had had it from the start (a
miss, a refusal with its 4xx, every other route).
So there is one implementation of every error and of every non-hit, and the fast path
only ever produces the one response it is sure of.

A GET of one byte range of a block (``Range: bytes=...``, one header, one range: what
:mod:`clientlib.client` sends for a mount's random reads) is answered here too when the
range is satisfiable and not the whole block (:meth:`HitServer.serve_range`): with
aiohttp's 206 and ``Content-Range``, from the block's verified copy in the memory tier,
or from the parts of its file that hold the range, checked against the file's trailer
(:meth:`BlockStore.read_range_now` from the page cache, else the pool as above). A
range that is unsatisfiable, several ranges, or parts that do not match are aiohttp's.

Small blocks go out with one ``writev`` of head and body; large ones with the head and
then ``sendfile`` (:mod:`cachenode.sendfile`). Requests on one connection are answered
strictly in order: a request is not looked at while the previous response is still
being sent. A TLS connection is handed to aiohttp at once (``sendfile`` cannot encrypt,
:func:`cachenode.sendfile.plain_tcp`); the node's TLS listener does not use this site.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive

from cachenode.context import NodeContext
from cachenode.hitcore import HOT_HEADER, RESULT_HEADER, HitCore
from cachenode.hittally import HitTally
from cachenode.httphead import (
    BAD_HEAD,
    HEAD_TOO_LARGE,
    MAX_HEAD,
    MAX_PARTIAL_HEAD,
    BlockGetHead,
    could_be_head,
    parse_head,
    refusal,
)
from cachenode.memtier import default_max_copies
from cachenode.metrics import REQUESTS_REFUSED
from cachenode.sendfile import plain_tcp, send_file, send_now, wait_flushed
from cachenode.store import BlockBytes, BlockFile, BlockPart, BlockStore
from cachenode.verifier import Verifier
from clientlib.auth import ALL_ACCESS, Claims
from clientlib.errors import RingcacheError
from clientlib.ranges import Span, parse_range

__all__ = [
    "HEAD_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "FastHitProtocol",
    "FastHitSite",
    "HitServer",
    "connection_budget",
]

log = logging.getLogger(__name__)

#: Idle keep-alive connections are closed after this long, as aiohttp does.
KEEPALIVE_TIMEOUT = 75.0
#: A request head must be complete this long after its first byte (a connection's first
#: head: after the connection was accepted), as nginx's ``client_header_timeout``; then
#: the connection gets a 408 (or, if it sent nothing, is just closed).
HEAD_TIMEOUT = 10.0
#: Open files the node keeps for itself (block files being sent, origin and etcd
#: connections, logs): client connections get the rest of its ``RLIMIT_NOFILE``.
FD_RESERVE = 128
_SWEEP_EVERY = 10
#: Parsed request heads kept (:meth:`HitServer.asked`), up to this many (then all are
#: dropped) of up to :data:`MAX_KNOWN_HEAD` bytes each: 4 MiB at most.
MAX_KNOWN_HEADS = 4096
MAX_KNOWN_HEAD = 1024
_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    + f"{RESULT_HEADER}: hit\r\n".encode()
)
_HOT = f"{HOT_HEADER}: 1\r\n".encode()
#: A hit's response head, by (hot, close), to be formatted with the body's length.
_HEADS = {
    (hot, close): _OK
    + (_HOT if hot else b"")
    + (b"Connection: close\r\n" if close else b"")
    + b"Content-Length: %d\r\n\r\n"
    for hot in (False, True)
    for close in (False, True)
}
#: A range hit's response head, by (hot, close), to be formatted with the range's first and
#: last byte, the block's length and the range's length (as aiohttp's route answers).
_RANGE_HEADS = {
    (hot, close): b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
    + f"{RESULT_HEADER}: hit\r\n".encode()
    + (_HOT if hot else b"")
    + (b"Connection: close\r\n" if close else b"")
    + b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
    for hot in (False, True)
    for close in (False, True)
}
_HEAD_TIMED_OUT = refusal(
    408, "Request Timeout", f"request head not complete within {HEAD_TIMEOUT:g} s"
)


class _Asked(NamedTuple):
    """A block GET's head as the fast path reads it: the head, its query's fields, and
    whether, on this node, it may read its block with no further check (an open
    cluster's GET by block id alone: :meth:`HitCore.claims` is then everything and
    :meth:`HitCore.lookup` needs all access and asks for no proof, whatever the head)."""

    head: BlockGetHead
    fields: dict[str, str]
    open_read: bool


class _Want(NamedTuple):
    """A hit being answered: the block, the ``span`` of it asked (None: all of it),
    whether the connection closes after it, the tenant it is counted for, and when its
    request began."""

    block_id: str
    span: Span | None
    close: bool
    tenant: str
    started: float


class _Body:
    """A large block's rest being sent (see :meth:`FastHitProtocol._send_rest_when_writable`):
    to ``transport``'s socket through its duplicate ``out``, ``sent`` bytes of it so far."""

    __slots__ = ("block", "block_id", "close", "out", "sent", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        block: BlockFile,
        out: int,
        sent: int,
        block_id: str,
        close: bool,
    ) -> None:
        self.transport = transport
        self.block = block
        self.out = out
        self.sent = sent
        self.block_id = block_id
        self.close = close


class HitServer:
    """Serves the hits :class:`FastHitProtocol` reads, with the node's store and context."""

    def __init__(
        self,
        store: BlockStore,
        node: NodeContext,
        verifier: Verifier | None,
        fallback: Callable[[], asyncio.Protocol],
    ) -> None:
        self.store = store
        self.node = node
        self.core = HitCore(node, verifier)
        #: Makes aiohttp's protocol for a connection handed over (the runner's server).
        self.fallback = fallback
        self.connections: set[FastHitProtocol] = set()
        #: How many connections the fast path may hold (see :meth:`FastHitSite._sweep`).
        self.max_connections = connection_budget(0)
        #: Set when the site stops: each response in progress closes its connection.
        self.closing = False
        self._tally = HitTally()
        self._hot = node.hot
        #: A small hit's response head by (hot, close, length) (see :meth:`_send_now`).
        self._heads: dict[tuple[bool, bool, int], bytes] = {}
        #: Request head -> what it asks, with its query's fields parsed (see :meth:`asked`).
        self._known: dict[bytes, _Asked] = {}
        node.before_report.append(self.report)

    def admit(self, conn: FastHitProtocol) -> bool:
        """Whether a new connection may stay: at the limit, the connection that has
        waited longest for a request head (or idled longest) is closed to make room, as
        nginx reuses its idle connections, so stalled clients cannot keep real ones out;
        with none waiting, the new one is refused."""
        if len(self.connections) < self.max_connections:
            return True
        waiting = (c for c in self.connections if c.sending is None)
        oldest = min(waiting, key=FastHitProtocol.waiting_since, default=None)
        REQUESTS_REFUSED.labels("connection_limit").inc()
        if oldest is None:
            return False
        oldest.close()
        self.connections.discard(oldest)
        return True

    def asked(self, raw: bytes) -> _Asked | None:
        """What a request head (up to the CRLF of its last header) asks, if it is a block
        GET the fast path may take (:func:`parse_head`: plain, or with one ``Range``),
        with its query's fields; None to let aiohttp answer (also for a repeated query
        parameter, whose rules are aiohttp's).

        A client asking for a hot block sends the same head again and again, so plain
        heads are parsed once and kept (:data:`MAX_KNOWN_HEADS`; :meth:`serve` looks a
        head up there before it asks this); range heads are not, random reads make each
        one new. What a head may read is still decided on every request
        (:meth:`claims`), except where nothing can change it (``open_read``).
        """
        head = parse_head(raw)
        if head is None:
            return None
        fields = _query_fields(head.query)
        if fields is None:
            return None
        open_read = self.core.verifier is None and "src" not in fields
        known = _Asked(head, fields, open_read)
        if head.range is None and len(raw) <= MAX_KNOWN_HEAD:
            if len(self._known) >= MAX_KNOWN_HEADS:
                self._known.clear()
            self._known[raw] = known
        return known

    def claims(self, head: BlockGetHead, fields: dict[str, str]) -> Claims | None:
        """The request's claims if the fast path may answer it from the store; None to
        let aiohttp answer (a refusal, or a lookup whose answer carries a proof)."""
        try:
            claims = self.core.claims("GET", head.target, head.authorization)
            if self.core.lookup(claims, head.block_id, fields).proven:
                return None
        except RingcacheError:
            return None
        return claims

    def serve(self, conn: FastHitProtocol, raw: bytes) -> bool:
        """Answer the request head ``raw`` if it is a hit that can be sent now; False
        leaves it to aiohttp."""
        started = time.perf_counter()
        asked = self._known.get(raw)
        if asked is None:
            asked = self.asked(raw)
            if asked is None:
                return False
        head, fields, open_read = asked
        claims = ALL_ACCESS if open_read else self.claims(head, fields)
        if claims is None:
            return False
        if head.range is not None:
            return self.serve_range(conn, raw, head, claims, started)
        fair = self.node.fair
        if not fair.free():
            return False
        block_id = head.block_id
        found = self.store.read_now(block_id)
        if type(found) is bytes:
            self._send_now(conn, found, block_id, head.close, claims.tenant, started)
            return True
        taken = fair.try_acquire()  # nothing ran since free()
        assert taken
        if found is None:
            return self._later(conn, raw, _Want(block_id, None, head.close, claims.tenant, started))
        self._send(conn, found, block_id, None, head.close, claims.tenant, started)
        return True

    def _send_now(
        self,
        conn: FastHitProtocol,
        body: bytes,
        block_id: str,
        close: bool,
        tenant: str,
        started: float,
    ) -> None:
        """Send a whole small block's verified ``body``, asked by ``tenant`` at ``started``,
        in one ``writev`` (what the socket does not take at once, the transport sends
        later).

        The request is answered before anything else runs, so it takes nothing that it
        would give back at once, as :meth:`_send` and :meth:`done` do: its fair-share slot
        was only checked free (:meth:`FairScheduler.free`), it counts as a hot-block GET
        that began and ended now (:meth:`HotBlocks.hit`), and it is never in flight for
        a drain (:attr:`NodeContext.inflight`), only the node's last request.
        """
        now = time.monotonic()
        hot = self._hot.hit(block_id, now)
        self.node.last_request = now
        nbytes = len(body)
        key = (hot, close, nbytes)
        response = self._heads.get(key)
        if response is None:
            if len(self._heads) >= MAX_KNOWN_HEADS:
                self._heads.clear()
            response = self._heads[key] = _HEADS[hot, close] % nbytes
        self._tally.hit(tenant, nbytes, time.perf_counter() - started)
        conn.send_whole(response, body, close or self.closing)

    def serve_range(
        self, conn: FastHitProtocol, raw: bytes, head: BlockGetHead, claims: Claims, started: float
    ) -> bool:
        """Answer the authorised request ``head`` for one byte range of a block if its
        bytes can be sent now (see module); False leaves it to aiohttp."""
        block_id = head.block_id
        length = self.store.length(block_id)
        if length is None:
            return False
        try:
            span = parse_range((cast(str, head.range),), length)
        except RingcacheError:  # unsatisfiable or malformed: aiohttp's 416
            return False
        if not span.partial or not self.node.fair.try_acquire():
            return False  # the whole block is a 200 without Content-Range: aiohttp's
        found = self.store.read_range_now(block_id, span.part)
        if found is None:
            return self._later(conn, raw, _Want(block_id, span, head.close, claims.tenant, started))
        self._send(conn, found, block_id, span, head.close, claims.tenant, started)
        return True

    def _send(
        self,
        conn: FastHitProtocol,
        found: bytes | BlockFile,
        block_id: str,
        span: Span | None,
        close: bool,
        tenant: str,
        started: float,
    ) -> None:
        """Send a hit of ``block_id``, the whole block (``span`` None) or ``span`` of it,
        whose verified bytes or file are ``found``, asked by ``tenant`` at ``started``
        (then the connection closes if ``close``); the caller holds a fair-share slot for
        it. ``found`` as bytes is exactly what is sent (a range already sliced)."""
        hot = self._hot.begin(block_id)  # HitCore.begin_get's count, one call less
        self.node.enter()
        large = isinstance(found, BlockFile)
        if span is None:
            nbytes = found.nbytes if large else len(found)
            response = _HEADS[hot, close] % nbytes
        else:
            nbytes = span.nbytes
            response = _RANGE_HEADS[hot, close] % (span.start, span.stop - 1, span.length, nbytes)
        self._tally.hit(tenant, nbytes, time.perf_counter() - started)
        if not large:
            conn.send_bytes(response, found, block_id, close)
        elif span is None:
            conn.send_block(response, found, block_id, close)
        else:
            conn.send_range(response, found, span, block_id, close)

    def _later(self, conn: FastHitProtocol, raw: bytes, want: _Want) -> bool:
        """A request for an indexed block whose bytes are not all in memory: answered
        here once the store has read and checked them in its pool, so that a connection
        stays on the fast path through reads that wait for the disk (a block warmed with
        ``O_DIRECT``, a random read after the page cache dropped the block) instead of
        going over to aiohttp for good. False (the slot freed) for a block not indexed:
        a miss, aiohttp's."""
        if self.store.length(want.block_id) is None:
            self.node.fair.release()
            return False
        conn.answer_later(raw, self._read_then_send(conn, want))
        return True

    async def _read_then_send(self, conn: FastHitProtocol, want: _Want) -> bool:
        """Read and check the block (or ``span``'s parts) as aiohttp's route does, then
        send it; False when nothing was sent (the block turned out absent or bad, and the
        store dropped it): the request is then aiohttp's, a miss."""
        block_id, span = want.block_id, want.span
        try:
            cached = await self.store.open_block(block_id, part=None if span is None else span.part)
        except BaseException:
            self.node.fair.release()
            raise
        if cached is None or not conn.open:
            self.node.fair.release()
            if cached is not None:
                cached.close()
            return cached is not None  # a connection gone needs no answer
        if isinstance(cached, BlockPart):
            found: bytes | BlockFile = cached.data
        elif isinstance(cached, BlockBytes):
            found = cached.data if span is None else cached.data[span.start : span.stop]
        else:
            found = cached
        self._send(conn, found, *want)
        return True

    def report(self) -> None:
        """Add the fast hits so far to the node's Prometheus metrics."""
        self._tally.report()

    def done(self, block_id: str, close: bool, transport: asyncio.Transport) -> None:
        """A fast response is sent (or given up): free its slot and counts."""
        self.node.fair.release()
        self.node.leave()
        self._hot.end(block_id)  # HitCore.end_get's count, one call less
        if close or self.closing:
            transport.close()


def _query_fields(query: str) -> dict[str, str] | None:
    """A query's fields; None for a repeated parameter, whose rules are aiohttp's."""
    if not query:
        return {}
    pairs = parse_qsl(query, keep_blank_values=True)
    fields = dict(pairs)
    return fields if len(fields) == len(pairs) else None


def connection_budget(others: int) -> int:
    """How many connections the fast path may hold, when ``others`` are aiohttp's; the
    memory tier's sealed copies hold file descriptors of their own."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - FD_RESERVE - default_max_copies() - others)


class FastHitProtocol(asyncio.Protocol):
    """One client connection: hits answered here until a request is not one (see module)."""

    def __init__(self, hits: HitServer) -> None:
        self._hits = hits
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._eof = False
        #: The transport's socket, for ``sendfile`` and corking (its ``fileno`` is -1
        #: once the transport closed it, so a number reused meanwhile is never written).
        self._sock: socket.socket | None = None
        #: The task finishing a response (or waiting for the socket): while it runs, no
        #: further request is looked at.
        self.sending: asyncio.Future[None] | None = None
        #: The large block whose rest is being sent from a writability callback.
        self._body: _Body | None = None
        self.last_active = time.monotonic()
        #: When the head now awaited began (None: between requests, see HEAD_TIMEOUT).
        self.head_since: float | None = self.last_active

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        if not plain_tcp(self._transport):
            self._hand_over(self._transport)
            return
        if not self._hits.admit(self):
            self._transport.abort()
            return
        tcp_keepalive(self._transport)
        self._sock = self._transport.get_extra_info("socket")
        self._hits.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._hits.connections.discard(self)
        if self._body is not None:
            self._end_body(ConnectionResetError("connection lost mid-body"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.sending is not None:
            self.sending.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.sending is None and not self._buf and self._answer_whole(data):
            return
        self._buf += data
        if self.head_since is None:
            self.head_since = self.last_active
        if self.sending is None:
            self._process()
        elif len(self._buf) > MAX_HEAD and self._transport is not None:
            # A client pipelining while a response is under way: take no more for now.
            self._transport.pause_reading()
            self._reading_paused = True

    def _answer_whole(self, data: bytes) -> bool:
        """Take ``data`` at once if it is exactly one whole request head (what a client
        that waits for each answer sends): answered if it is a hit, else handed over with
        it, as :meth:`_process` would, without the buffer's copies. False: nothing was
        done, and the buffer's way (:meth:`_process`) must take ``data``."""
        end = len(data) - 4
        transport = self._transport
        if (
            end > MAX_HEAD
            or data.find(b"\r\n\r\n") != end
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return False
        if self._hits.serve(self, data[: end + 2]):
            self.head_since = None
        else:
            self._buf += data
            self._hand_over(transport)
        return True

    def eof_received(self) -> bool:
        """The client sent all it will: answer what it asked, then close (True keeps the
        transport open for the answers in progress)."""
        self._eof = True
        if self.sending is None:
            self._process()
        return True

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def idle(self, now: float, timeout: float) -> bool:
        """Whether the connection has had nothing to do for ``timeout`` seconds."""
        return self.sending is None and not self._buf and now - self.last_active > timeout

    def waiting_since(self) -> float:
        """Since when the connection has waited for a request head, or idled."""
        return self.last_active if self.head_since is None else self.head_since

    def head_overdue(self, now: float) -> bool:
        """Whether a request head has been awaited for longer than :data:`HEAD_TIMEOUT`."""
        return (
            self.sending is None
            and self.head_since is not None
            and now - self.head_since > HEAD_TIMEOUT
        )

    def time_out_head(self) -> None:
        """Close a connection whose head is overdue: with a 408 if it sent part of one."""
        if self._buf:
            self.refuse(_HEAD_TIMED_OUT, "head_timeout")
        else:
            self.close()

    def refuse(self, response: bytes, reason: str) -> None:
        """Answer the request head in progress with ``response`` and close."""
        REQUESTS_REFUSED.labels(reason).inc()
        self._buf.clear()
        if self._transport is not None:
            self._transport.write(response)
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def resume(self) -> None:
        """Go on with the requests that came while a response was being sent."""
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        self._process()

    @property
    def open(self) -> bool:
        """Whether the connection is still this protocol's and not closing."""
        return self._transport is not None and not self._transport.is_closing()

    def answer_later(self, raw: bytes, answer: Coroutine[Any, Any, bool]) -> None:
        """Answer the request head ``raw`` (taken off the buffer) with ``answer``, which
        sends the response or, finding nothing to send, returns False: the head then goes
        back in front of the buffer and the connection to aiohttp. No request after it is
        looked at meanwhile (:attr:`sending`)."""
        self.sending = asyncio.ensure_future(self._answer(raw, answer))

    async def _answer(self, raw: bytes, answer: Coroutine[Any, Any, bool]) -> None:
        me = self.sending
        try:
            sent = await answer
        except Exception:
            # Nothing of the response is out: the client sees the connection close.
            log.exception("fast path: a hit's read failed")
            sent = True
            if self._transport is not None:
                self._transport.abort()
        if self.sending is not me:
            return  # the rest of the body is being sent: that task resumes the connection
        self.sending = None
        if sent:
            self.resume()
        elif self._transport is not None:
            self._buf[:0] = raw + b"\r\n"
            self._hand_over(self._transport)

    def send_whole(self, head: bytes, body: bytes, close: bool) -> None:
        """Answer with head and body in one ``writev``, holding nothing (see
        :meth:`HitServer._send_now`); then close if ``close``."""
        transport = self._transport
        assert transport is not None
        transport.writelines((head, body))
        if close:
            transport.close()

    def send_bytes(self, head: bytes, body: bytes, block_id: str, close: bool) -> None:
        """Answer with a small block's bytes: head and body in one ``writev``."""
        transport = self._transport
        assert transport is not None
        transport.writelines((head, body))
        self._hits.done(block_id, close, transport)

    def send_block(self, head: bytes, block: BlockFile, block_id: str, close: bool) -> None:
        """Answer with a large block's verified file (see :meth:`_send_file`)."""
        self._send_file(head, block, 0, block_id, close)

    def send_range(
        self, head: bytes, block: BlockFile, span: Span, block_id: str, close: bool
    ) -> None:
        """Answer with ``span`` of a large block's verified copy in the memory tier, or of
        its file whose parts holding ``span`` were checked (see :meth:`_send_file`)."""
        self._send_file(head, block._replace(nbytes=span.stop), span.start, block_id, close)

    def _send_file(
        self, head: bytes, block: BlockFile, start: int, block_id: str, close: bool
    ) -> None:
        """The head, then ``sendfile`` of ``block`` from ``start`` to its ``nbytes``,
        inline as far as the socket takes it, the rest once it has room (:attr:`sending`)."""
        transport, sock = self._transport, self._sock
        assert transport is not None and sock is not None
        # Corked, head and body leave in full-sized segments, as nginx's tcp_nopush
        # does: a separate small head segment costs the reader a wakeup per block.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        transport.write(head)
        sent = start
        if not transport.get_write_buffer_size():  # else the body must not overtake it
            try:
                sent = send_now(sock.fileno(), block.fd, start, block.nbytes)
            except OSError as exc:
                # Part of the body may be out: the client must see a broken response,
                # never a wrong one.
                log.debug("hit of block %s: send failed after headers: %s", block_id, exc)
                transport.abort()
                sent = -1
        if sent >= 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        if sent < 0 or sent == block.nbytes:
            block.close()
            self._hits.done(block_id, close, transport)
        elif transport.get_write_buffer_size():  # the head is still buffered
            self.sending = asyncio.ensure_future(
                self._send_rest(transport, block, sent, block_id, close)
            )
        else:
            self._send_rest_when_writable(transport, sock, block, sent, block_id, close)

    def _send_rest_when_writable(
        self,
        transport: asyncio.Transport,
        sock: socket.socket,
        block: BlockFile,
        sent: int,
        block_id: str,
        close: bool,
    ) -> None:
        """Send the rest of a large block from a writability callback on a duplicate of
        the socket (as :func:`cachenode.sendfile.send_file` does, see there why a
        duplicate), with no task: a task, its coroutines and futures were a good part of
        a 4 MiB hit's Python calls, each of which runs with caches cold after the
        kernel's network work. :attr:`sending` is a plain future meanwhile, so that no
        further request is looked at; :meth:`_end_body` ends it."""
        loop = asyncio.get_running_loop()
        out = os.dup(sock.fileno())
        self.sending = loop.create_future()
        self._body = _Body(transport, block, out, sent, block_id, close)
        try:
            loop.add_writer(out, self._write_body)
        except BaseException:
            self._end_body(None)
            raise

    def _write_body(self) -> None:
        """The socket has room: ``sendfile`` more of the body being sent."""
        body = self._body
        if body is None:
            return
        if body.transport.is_closing():
            self._end_body(ConnectionResetError("connection closed mid-body"))
            return
        try:
            body.sent = send_now(body.out, body.block.fd, body.sent, body.block.nbytes)
        except OSError as exc:  # ConnectionError included: the client hung up
            self._end_body(exc)
            return
        if body.sent >= body.block.nbytes:
            self._end_body(None)

    def _end_body(self, error: BaseException | None) -> None:
        """The body is sent (``error`` None) or given up (the connection is aborted: the
        client must see a broken response, never a wrong one); go on with the
        connection's next request, if it is still open."""
        body, self._body = self._body, None
        assert body is not None
        asyncio.get_running_loop().remove_writer(body.out)
        os.close(body.out)
        body.block.close()
        if error is not None:
            log.debug("hit of block %s: send failed after headers: %s", body.block_id, error)
            body.transport.abort()
        sending, self.sending = self.sending, None
        if sending is not None and not sending.done():
            sending.set_result(None)
        self._hits.done(body.block_id, body.close, body.transport)
        if self._transport is not None:
            self.resume()

    async def _send_rest(
        self,
        transport: asyncio.Transport,
        block: BlockFile,
        sent: int,
        block_id: str,
        close: bool,
    ) -> None:
        """Send the rest of a large block once the socket has room, then go on with the
        connection's next request."""
        try:
            await self.drained()
            await send_file(transport, block.fd, block.nbytes, sent)
        except OSError as exc:  # ConnectionError included: the client hung up
            log.debug("hit of block %s: send failed after headers: %s", block_id, exc)
            transport.abort()
        except BaseException:
            transport.abort()  # cancelled mid-body: the response cannot be finished
            raise
        finally:
            block.close()
            self.sending = None
            self._hits.done(block_id, close, transport)
        self.resume()

    async def drained(self) -> None:
        """Wait until the transport has sent all it buffers (the next bytes may be
        ``sendfile``'s, which go to the socket past that buffer)."""
        if self._transport is not None:
            await wait_flushed(self._transport, self._resumed)

    async def _resumed(self) -> None:
        """Wait for :meth:`resume_writing` (or the connection's loss)."""
        self._drained = asyncio.get_running_loop().create_future()
        try:
            await self._drained
        finally:
            self._drained = None

    async def _drain_then_process(self) -> None:
        try:
            await self.drained()
        except ConnectionError:
            return
        finally:
            self.sending = None
        self.resume()

    def _process(self) -> None:
        """Answer the complete request heads buffered, in order, while they are hits."""
        while (transport := self._transport) is not None and not transport.is_closing():
            buf = self._buf
            if not buf:
                if self._eof:
                    transport.close()  # nothing more will come
                return
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # Only complete heads (or ones aiohttp refuses at once) are handed over:
                # aiohttp has no deadline for a head (only its keep-alive timeout).
                if len(self._buf) > MAX_PARTIAL_HEAD:
                    self.refuse(HEAD_TOO_LARGE, "head_too_large")
                elif not could_be_head(self._buf):
                    self.refuse(BAD_HEAD, "bad_head")
                elif self._eof:
                    transport.close()  # nothing more will come
                return  # the rest of the head is yet to come
            if transport.get_write_buffer_size():
                # The client reads slower than we answer: wait before the next request.
                self.sending = asyncio.ensure_future(self._drain_then_process())
                return
            if end > MAX_HEAD or not self._hits.serve(self, bytes(buf[: end + 2])):
                self._hand_over(transport)
                return
            del buf[: end + 4]
            self.head_since = self.last_active if buf else None
            if self.sending is not None:
                return  # resume() comes when the response is sent

    def _hand_over(self, transport: asyncio.Transport) -> None:
        """Make aiohttp's protocol this connection's, with the bytes not yet answered."""
        self._transport = None
        self._hits.connections.discard(self)
        handler = self._hits.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if self._buf:
            handler.data_received(bytes(self._buf))
            self._buf.clear()
        if self._eof:
            handler.eof_received()


class FastHitSite(web.BaseSite):
    """A TCP site whose connections start on the hit fast path (aiohttp's site otherwise).

    The runner's own server answers every connection handed over, and shuts those down
    on cleanup as usual; this site closes the connections still on the fast path.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        store: BlockStore,
        node: NodeContext,
        verifier: Verifier | None,
        host: str,
        port: int,
        *,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        assert runner.server is not None
        self._hits = HitServer(store, node, verifier, runner.server)
        self._host = host
        self._port = port
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FastHitProtocol(self._hits), self._host, self._port, backlog=self._backlog
        )
        self._sweeper = loop.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().stop()
        for conn in list(self._hits.connections):
            if conn.sending is None:
                conn.close()
        self._hits.closing = True

    async def _sweep(self) -> None:
        """Every second, report the tallied hits, close connections whose request head is
        overdue (:data:`HEAD_TIMEOUT`) and size the connection budget to the open-file
        limit; every :data:`_SWEEP_EVERY` seconds, close keep-alive connections idle for
        :data:`KEEPALIVE_TIMEOUT`."""
        hits = self._hits
        for tick in itertools.count(1):
            await asyncio.sleep(1.0)
            hits.report()
            assert self._runner.server is not None
            hits.max_connections = connection_budget(len(self._runner.server.connections))
            now = time.monotonic()
            for conn in [c for c in hits.connections if c.head_overdue(now)]:
                conn.time_out_head()
            if tick % _SWEEP_EVERY == 0:
                for conn in [c for c in hits.connections if c.idle(now, KEEPALIVE_TIMEOUT)]:
                    conn.close()
