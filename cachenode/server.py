"""cachenode's HTTP routes (aiohttp). The API is documented in docs/http-api.md.

Routes only: they validate input, call :class:`ReadThrough` / :class:`BlockStore`, and turn
:class:`RingcacheError` into a 4xx/5xx with a JSON ``{"error": ...}`` body. Every input is
bounded: block ids and query values are checked before use, bodies are capped at the
largest block, batch requests at :data:`MAX_BATCH` ids.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple

import msgpack
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cachenode import dashboard
from cachenode.bodies import BodyBudget
from cachenode.fairshare import FairScheduler, Slot
from cachenode.metrics import (
    BLOCK_HITS,
    CACHE_BLOCKS,
    CACHE_CAPACITY,
    CACHE_USED,
    GET_HIT_SECONDS,
    HIT_BYTES,
    REQUEST_SECONDS,
    REQUESTS_REFUSED,
    SERVED_BYTES,
    TENANT_SERVED_BYTES,
)
from cachenode.readthrough import ReadThrough
from cachenode.sendfile import send_file
from cachenode.store import BlockFile, BlockPart, BlockStore
from cachenode.verifier import Verifier
from clientlib.auth import (
    ALL_ACCESS,
    DIGEST_HEADER,
    METRICS,
    PROOF_HEADER,
    WRITE,
    Claims,
    body_digest,
    check_digest,
)
from clientlib.blocks import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MAX_FIELD,
    BlockRef,
    check_block_id,
)
from clientlib.cluster import NodeInfo
from clientlib.errors import BadRequest, RangeNotSatisfiable, RingcacheError
from clientlib.status import collect_details

__all__ = ["MAX_BATCH", "NodeState", "make_app"]

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
MAX_BATCH_BODY = 4 * 1024 * 1024
MAX_WARM = 256
#: A block is "hot", and its readers are told to spread over its replicas, when it has
#: HOT_CONCURRENCY GETs in flight at once, or HOT_REQUESTS within one HOT_WINDOW (s).
#: The count matters where sends are fast (loopback, small blocks): 48 readers of one
#: 4 MiB block rarely had 4 GETs in flight at once here, yet one node served them all.
HOT_CONCURRENCY = 4
HOT_REQUESTS = 16
HOT_WINDOW = 1.0


class NodeState:
    """What the routes need to know about the node beyond its store.

    ``cluster_nodes`` lists the cluster's members from etcd (for service discovery and
    the dashboard); ``stop`` is set to drain the node, by SIGTERM or ``cachectl drain``;
    ``block_size`` is the cluster's setting, which block geometry is taken from (never
    from a request alone).
    """

    def __init__(
        self,
        node_id: str,
        cluster: str = "default",
        cluster_nodes: Callable[[], Awaitable[list[NodeInfo]]] | None = None,
        serve_slots: int = 64,
        block_size: Callable[[], int] = lambda: DEFAULT_BLOCK_SIZE,
    ) -> None:
        self.node_id = node_id
        #: The cluster's block size now (from etcd): the only one this node stores.
        self.block_size = block_size
        self.bodies = BodyBudget()
        self.cluster = cluster
        self.draining = False
        self.joined = False
        self.peer_ssl: ssl.SSLContext | None = None
        self.stop = asyncio.Event()
        self.inflight = 0
        self.last_request = time.monotonic()
        self.fair = FairScheduler(serve_slots)
        #: Block GETs in flight, and GETs in the current hot window, by block id, on both
        #: hit paths (aiohttp's and cachenode.fasthits); see :meth:`begin_get`.
        self._active: dict[str, int] = {}
        self._recent: dict[str, int] = {}
        self._window_start = time.monotonic()
        #: Called before the node's counters are read (/metrics, /v1/stats): the hit fast
        #: path tallies its counts in plain ints and adds them to Prometheus here.
        self.before_report: list[Callable[[], None]] = []
        self._cluster_nodes = cluster_nodes

    def report(self) -> None:
        for hook in self.before_report:
            hook()

    def begin_get(self, block_id: str) -> bool:
        """Count a GET of ``block_id`` in; whether the block is hot (see HOT_REQUESTS).

        The window's counts are dropped as a whole when it ends, so they cost one dict
        entry per block asked for within the last second, and nothing per request later.
        """
        active = self._active[block_id] = self._active.get(block_id, 0) + 1
        now = time.monotonic()
        if now - self._window_start >= HOT_WINDOW:
            self._recent.clear()
            self._window_start = now
        recent = self._recent[block_id] = self._recent.get(block_id, 0) + 1
        return active >= HOT_CONCURRENCY or recent >= HOT_REQUESTS

    def end_get(self, block_id: str) -> None:
        """Count a GET of ``block_id`` out (answered, failed or given up)."""
        if self._active[block_id] == 1:
            del self._active[block_id]
        else:
            self._active[block_id] -= 1

    async def cluster_nodes(self) -> list[NodeInfo]:
        return [] if self._cluster_nodes is None else await self._cluster_nodes()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refused(reason: str) -> None:
    REQUESTS_REFUSED.labels(reason).inc()


def make_middleware(
    state: NodeState, verifier: Verifier | None
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticate data and admin routes, track block requests in flight (for draining),
    and turn errors into clear JSON. ``/metrics``, ``/healthz`` and the stats routes carry
    no data and stay open (Prometheus and probes have no token)."""

    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            # Batch bodies are read here, within the node's body budget, before anything
            # else: the signature covers their digest.
            if request.content_length is None or request.content_length > MAX_BATCH_BODY:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=MAX_BATCH_BODY, actual_size=request.content_length or 0
                )
            async with state.bodies.admit(request.content_length):
                body = await state.bodies.read(request)
                return await signed(request, handler, body_digest(body) if verifier else "")
        digest = ""
        if request.method == "PUT" and verifier is not None:
            # The body is checked against this declared digest once read (put_block), so
            # the signature is checked before a byte of it is taken into memory.
            digest = check_digest(request.headers.get(DIGEST_HEADER))
        return await signed(request, handler, digest)

    async def signed(request: web.Request, handler: Handler, digest: str) -> web.StreamResponse:
        if verifier is None:
            request["claims"] = ALL_ACCESS
        else:
            request["claims"] = verifier.verify(
                request.method, request.raw_path, request.headers.get("Authorization"), digest
            )
        return await fair(request, handler)

    async def fair(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Block GETs take a serving slot in their tenant's turn (cachenode.fairshare)."""
        if request.method != "GET":
            return await handler(request)
        tenant = request["claims"].tenant
        async with state.fair.slot(tenant, state.block_size()) as slot:
            request["slot"] = slot
            response = await handler(request)
        TENANT_SERVED_BYTES.labels(tenant).inc(response.content_length or 0)
        return response

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/admin/"):
            return await errors_middleware(request, partial(authenticated, handler=handler))
        if not request.path.startswith("/v1/blocks/"):
            return await errors_middleware(request, handler)
        state.inflight += 1
        try:
            return await errors_middleware(request, partial(authenticated, handler=handler))
        finally:
            state.inflight -= 1
            state.last_request = time.monotonic()

    return middleware


async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn the project's errors and aiohttp's own 4xx into JSON with a clear message."""
    try:
        return await handler(request)
    except RingcacheError as exc:
        if exc.http_status < 500:
            _refused(type(exc).__name__.lower())
            log.info("refused %s %s: %s", request.method, request.path_qs[:200], exc)
        else:
            log.warning("failed %s %s: %s", request.method, request.path_qs[:200], exc)
        return web.json_response({"error": str(exc)}, status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status >= 400:
            _refused("not_found" if exc.status == 404 else f"http_{exc.status}")
            return web.json_response({"error": exc.reason}, status=exc.status)
        raise


async def _msgpack_body(request: web.Request, max_str_len: int = 64) -> Any:
    """The request's msgpack body, bounded in bytes, array length and string length."""
    if request.content_type != "application/msgpack":
        raise BadRequest("body must be application/msgpack")
    if request.content_length is None or request.content_length > MAX_BATCH_BODY:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BATCH_BODY, actual_size=request.content_length or 0
        )
    raw = await request.read()
    try:
        return msgpack.unpackb(raw, max_array_len=MAX_BATCH, max_str_len=max_str_len, max_map_len=8)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadRequest(f"malformed msgpack body: {exc}") from None


def _ids_from_doc(doc: Any) -> list[str]:
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("body must be a map {'ids': [block id, ...]}")
    return [check_block_id(i) for i in ids]


def _refs_from_doc(
    doc: Any, claims: Claims, block_size: int, limit: int = MAX_BATCH
) -> list[tuple[str, BlockRef]]:
    """The blocks a ``{"blocks": [{"id", "src", "ver", "size", "bs", "i"}, ...]}`` body
    names, each checked against its id, the cluster's block size and ``claims``."""
    items = doc.get("blocks") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) > limit:
        raise BadRequest(f"body must be a map {{'blocks': [...]}} of at most {limit}")
    refs = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise BadRequest("each block is a map with 'id', 'src', 'ver', 'size', 'bs', 'i'")
        query = {k: str(v) for k, v in item.items() if k != "id"}
        block_id = check_block_id(item["id"])
        ref = BlockRef.from_fields(block_id, query, block_size)
        claims.require(ref.url)
        refs.append((block_id, ref))
    return refs


def counters() -> dict[str, int]:
    """The node's counters, read from its Prometheus registry (one source of truth)."""

    def sample(name: str, **labels: str) -> int:
        return int(REGISTRY.get_sample_value(name, labels or None) or 0)

    return {
        "hits": sample("ringcache_block_hits_total"),
        "misses": sample("ringcache_block_misses_total"),
        "hit_bytes": sample("ringcache_served_bytes_total", result="hit"),
        "miss_bytes": sample("ringcache_served_bytes_total", result="miss"),
        "origin_bytes": sample("ringcache_origin_bytes_total"),
        "origin_requests": sample("ringcache_origin_requests_total", op="get"),
        "evictions": sample("ringcache_evictions_total"),
    }


async def _send_block_file(
    request: web.Request,
    response: web.StreamResponse,
    block_id: str,
    block: BlockFile,
    span: _Span,
) -> web.StreamResponse:
    """Send the headers with aiohttp, then the verified block file with ``sendfile`` (on a
    plain TCP connection; a TLS one gets the file's bytes through its transport)
    (:mod:`cachenode.sendfile`; aiohttp's ``FileResponse`` would read and write, as
    uvloop has no ``loop.sendfile``). The file was verified before the first header byte
    (:meth:`BlockStore.open_verified`), and the fd is the one that was verified.

    A failure after the headers (the client hung up, or the file cannot be read) aborts
    the connection, as a failed miss does: the client sees a short body and tries the
    next owner.
    """
    if request.transport is not None and request.transport.get_extra_info("sslcontext"):
        # sendfile writes to the socket past TLS: the bytes would leave unencrypted (and
        # the client, expecting a TLS record, drops the connection). Read the verified fd
        # and send through the transport, which encrypts.
        data = await asyncio.to_thread(os.pread, block.fd, span.stop - span.start, span.start)
        if len(data) != span.stop - span.start:
            raise OSError(f"block file of {block_id} ended early")
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        return response
    writer = await response.prepare(request)
    transport = request.transport
    if writer is None or transport is None or transport.is_closing():
        return response
    writer.send_headers()  # aiohttp holds them back to coalesce them with a body write
    try:
        await _wait_flushed(writer, transport)
        if transport.is_closing():
            return response
        await send_file(transport, block.fd, span.stop, span.start)
    except ConnectionError as exc:
        log.debug("hit of block %s: client gone mid-body: %s", block_id, exc)
        transport.abort()
        return response
    except OSError as exc:
        log.warning("hit of block %s: send failed after headers: %s", block_id, exc)
        transport.abort()
        return response
    except BaseException:
        transport.abort()  # cancelled mid-body: the response cannot be finished
        raise
    await response.write_eof()
    return response


class _Span(NamedTuple):
    """The part of a block a ``Range`` header asks for: ``[start, stop)`` of ``length``."""

    start: int
    stop: int
    length: int

    @property
    def partial(self) -> bool:
        return self.stop - self.start != self.length

    @property
    def part(self) -> tuple[int, int]:
        """``(start, stop)``, as :meth:`BlockStore.open_verified` takes it."""
        return self.start, self.stop

    @property
    def status(self) -> int:
        return 206 if self.partial else 200

    def headers(self) -> dict[str, str]:
        if not self.partial:
            return {}
        return {"Content-Range": f"bytes {self.start}-{self.stop - 1}/{self.length}"}


def _span(request: web.Request, length: int) -> _Span:
    """The one byte range of a block ``request`` asks for (all of it without ``Range``).

    Readers of a few KiB of a block (a Parquet footer, a seek into an index) ask for
    just those instead of the whole 4 MiB. One range only: a client that wants several
    parts of a block asks for the block.
    """
    if "Range" not in request.headers:
        return _Span(0, length, length)
    if len(request.headers.getall("Range")) > 1:
        raise RangeNotSatisfiable("several Range headers: one range only")
    try:
        asked = request.http_range  # aiohttp: bytes=A-B, A- or -N in ASCII digits
    except ValueError as exc:
        raise RangeNotSatisfiable(f"bad Range header: {exc}") from None
    if asked.start == 0 and asked.stop is None and "=-" in request.headers["Range"]:
        # "bytes=-0", a suffix of no bytes, is slice(0, None) to aiohttp: the whole block.
        raise RangeNotSatisfiable(f"Range {request.headers['Range'][:100]!r} asks for no bytes")
    within = range(length)[asked]
    if asked.step not in (None, 1) or not within:
        raise RangeNotSatisfiable(
            f"Range {request.headers['Range'][:100]!r} is not inside the block's {length} bytes"
        )
    return _Span(within.start, within.stop, length)


async def _wait_flushed(writer: AbstractStreamWriter, transport: asyncio.Transport) -> None:
    """Wait until the transport has nothing buffered, so ``sendfile`` bytes follow it.

    The headers nearly always go straight to the socket; when they do not (the socket
    was full), a high-water mark of 0 pauses the protocol until the buffer is empty and
    aiohttp's own ``drain`` waits for that.
    """
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def _msgpack(doc: Any) -> web.Response:
    return web.Response(body=msgpack.packb(doc), content_type="application/msgpack")


def make_app(
    store: BlockStore,
    readthrough: ReadThrough,
    state: NodeState,
    verifier: Verifier | None = None,
) -> web.Application:
    """Build the node's aiohttp application (``verifier`` set: signed requests only)."""

    async def get_block(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        block_id = check_block_id(request.match_info["id"])
        hot = state.begin_get(block_id)
        try:
            return await serve_block(request, block_id, hot, started)
        finally:
            state.end_get(block_id)

    async def serve_block(
        request: web.Request, block_id: str, hot: bool, started: float
    ) -> web.StreamResponse:
        claims: Claims = request["claims"]
        # A hot lookup has no query string: skip parsing one into a MultiDict.
        if request.query_string and "src" in request.query:
            ref = BlockRef.from_fields(block_id, request.query, state.block_size())
            # Checked before the store: a cached block is no less the firm's data.
            claims.require(ref.url)
            asked = _cached_span(request, block_id)
            cached = await store.open_verified(block_id, part=None if asked is None else asked.part)
            if cached is None:
                return await serve_miss(request, ref, block_id, hot, started)
        else:
            claims.require_all_access("a lookup by block id alone")
            if verifier is not None:
                return await serve_proven(request, block_id)
            asked = _cached_span(request, block_id)
            cached = await store.open_verified(block_id, part=None if asked is None else asked.part)
            if cached is None:
                if not readthrough.fetching(block_id):
                    return web.json_response({"error": "block not cached"}, status=404)
                return await serve_join(request, block_id)
        # The hit is counted here rather than by ReadThrough.cached, which reads the whole
        # block into memory: large hits are sent from the verified file instead.
        BLOCK_HITS.inc()
        headers = {"X-Ringcache-Result": "hit"}
        if hot:
            # Tell clients to spread this block over its replicas (clientlib.client).
            headers["X-Ringcache-Hot"] = "1"
        try:
            # The span the store checked, or (no Range, or cached since that look) the
            # block's; a bad Range is refused here too, after which the fd is closed.
            length = len(cached) if isinstance(cached, bytes) else cached.nbytes
            span = asked or _span(request, length)
            HIT_BYTES.inc(span.stop - span.start)
            GET_HIT_SECONDS.observe(time.perf_counter() - started)
            if isinstance(cached, BlockPart):  # just the bytes of ``span``, read inline
                body = cached.data
            elif isinstance(cached, bytes):
                body = cached[span.start : span.stop] if span.partial else cached
            else:
                response = web.StreamResponse(
                    status=span.status, headers={**headers, **span.headers()}
                )
                response.content_type = "application/octet-stream"
                response.content_length = span.stop - span.start
                return await _send_block_file(request, response, block_id, cached, span)
            return web.Response(
                body=body, status=span.status, headers={**headers, **span.headers()}
            )
        finally:
            if isinstance(cached, BlockFile):
                cached.close()

    def _cached_span(request: web.Request, block_id: str) -> _Span | None:
        """The part a ``Range`` asks of a cached block, so the store checks only those
        bytes (None without a Range, or when the block is not cached: then it is a miss,
        whose span comes from the request's source parameters)."""
        if "Range" not in request.headers:
            return None
        length = store.length(block_id)
        return None if length is None else _span(request, length)

    async def stream_when_ready(
        request: web.Request,
        response: web.StreamResponse,
        data: Awaitable[bytes | None],
        span: _Span | None = None,
    ) -> bool:
        """Send the headers now and the body (its ``span``) once ``data`` resolves; abort
        the connection if it resolves to None (the client sees a broken response, never a
        short one)."""
        await response.prepare(request)
        slot: Slot | None = request.get("slot")
        if slot is None:
            body = await data
        else:
            # Waiting for the origin (or a peer) is not serving: hits may use the slot.
            async with slot.paused():
                body = await data
        if body is None:
            if request.transport is not None:
                request.transport.abort()
            return False
        if span is not None and span.partial:
            body = memoryview(body)[span.start : span.stop]
        await response.write(body)
        await response.write_eof()
        SERVED_BYTES.labels("miss").inc(len(body))
        return True

    async def serve_miss(
        request: web.Request, ref: BlockRef, block_id: str, hot: bool, started: float
    ) -> web.StreamResponse:
        """A miss: headers at once, the body when the origin fetch is done.

        Answering early tells the client this node is alive and on it, so the client's
        hedging does not ask a second node to fetch the same block from the origin. An
        origin failure after the headers aborts the connection; the client then tries
        the next owner or the origin itself.
        """
        readthrough.check(ref)
        span = _span(request, ref.length)
        headers = {"X-Ringcache-Result": "miss", **span.headers()}
        if hot:
            headers["X-Ringcache-Hot"] = "1"
        response = web.StreamResponse(status=span.status, headers=headers)
        response.content_length = span.stop - span.start

        async def fetch() -> bytes | None:
            try:
                return await readthrough.fetch(ref, block_id)
            except RingcacheError as exc:
                log.warning(
                    "miss of block %s of %s failed after headers: %s", block_id, ref.url, exc
                )
                return None

        if await stream_when_ready(request, response, fetch(), span):
            REQUEST_SECONDS.labels("get_miss").observe(time.perf_counter() - started)
        return response

    async def serve_proven(request: web.Request, block_id: str) -> web.Response:
        """A lookup by id on a secured cluster (another node's handoff): the whole block,
        once it is here (a hit, or a fetch in flight joined), with this node's proof that
        it knows the cluster secret and sent these bytes (:meth:`Verifier.prove`). The
        asking node stores nothing without that proof, so a rogue server registered in
        etcd cannot get its bytes into the cache. No early headers: the proof covers the
        body, so it goes out once the body is known."""
        assert verifier is not None
        data = await readthrough.cached(block_id)
        if data is None:
            return web.json_response({"error": "block not cached"}, status=404)
        digest = await asyncio.to_thread(body_digest, data)
        proof = verifier.prove(request.headers["Authorization"], digest)
        SERVED_BYTES.labels("hit").inc(len(data))
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-Ringcache-Result": "hit", PROOF_HEADER: proof},
        )

    async def serve_join(request: web.Request, block_id: str) -> web.StreamResponse:
        """A lookup of a block this node is fetching right now: headers at once (so the
        asking node knows this one is alive, see cachenode.handoff), the body when the
        fetch is done; the connection is aborted if it fails. The length is not known
        before the body, so a ``Range`` is ignored here: the whole block comes back."""
        response = web.StreamResponse(headers={"X-Ringcache-Result": "miss"})
        await stream_when_ready(request, response, readthrough.join(block_id))
        return response

    async def put_block(request: web.Request) -> web.Response:
        """Fill-on-write: store a block a writer pushes, if everything about it holds.

        Checked before a byte of the body is read: the token's ``write`` right on the
        source, the cluster's block size, the object's version and size *now* in the
        origin (so no made-up version can take cache space), the exact block length,
        and room in the node's body budget. Then the body must arrive in time and match
        the SHA-256 the signature covers.
        """
        started = time.perf_counter()
        block_id = check_block_id(request.match_info["id"])
        ref = BlockRef.from_fields(block_id, request.query, state.block_size())
        request["claims"].require(ref.url, WRITE)
        if request.content_length is None:
            raise BadRequest("Content-Length is required")
        if request.content_length != ref.length:
            raise BadRequest(f"body must be the block's {ref.length} bytes")
        await readthrough.check_current(ref)
        declared = request.headers.get(DIGEST_HEADER)
        async with state.bodies.admit(ref.length):
            data = await state.bodies.read(request)
            if declared is not None and body_digest(data) != check_digest(declared):
                raise BadRequest(f"body does not match its {DIGEST_HEADER}")
            stored = await readthrough.fill(block_id, data)
        REQUEST_SECONDS.labels("put").observe(time.perf_counter() - started)
        return web.json_response({"stored": stored}, status=201 if stored else 507)

    async def query_blocks(request: web.Request) -> web.Response:
        """Which blocks are cached. By id alone for operators; a scoped token names each
        block's source (as for warm), so it learns nothing about blocks outside its
        scope."""
        doc = await _msgpack_body(request, max_str_len=MAX_FIELD)
        if isinstance(doc, dict) and "blocks" in doc:
            refs = _refs_from_doc(doc, request["claims"], state.block_size())
            return _msgpack({"present": [block_id in store for block_id, _ in refs]})
        request["claims"].require_all_access("a presence query by block id alone")
        return _msgpack({"present": [i in store for i in _ids_from_doc(doc)]})

    async def evict_blocks(request: web.Request) -> web.Response:
        request["claims"].require_all_access("evicting blocks")
        ids = _ids_from_doc(await _msgpack_body(request))
        return _msgpack({"evicted": await store.evict(ids)})

    async def warm_blocks(request: web.Request) -> web.Response:
        """Fetch blocks into the store without sending them back (cachectl warmup)."""
        doc = await _msgpack_body(request, max_str_len=MAX_FIELD)
        refs = _refs_from_doc(doc, request["claims"], state.block_size(), MAX_WARM)

        async def warm(block_id: str, ref: BlockRef) -> tuple[str, int, str]:
            if block_id in store:
                return "cached", 0, ""
            try:
                data, hit = await readthrough.get(ref, block_id)
            except RingcacheError as exc:
                return "error", 0, f"{block_id}: {exc}"
            return ("cached", 0, "") if hit else ("fetched", len(data), "")

        results = await asyncio.gather(*(warm(i, r) for i, r in refs))
        return _msgpack(
            {
                "cached": sum(r[0] == "cached" for r in results),
                "fetched": sum(r[0] == "fetched" for r in results),
                "bytes": sum(r[1] for r in results),
                "errors": [r[2] for r in results if r[0] == "error"],
            }
        )

    async def stats(_: web.Request) -> web.Response:
        state.report()
        return web.json_response(
            {
                "id": state.node_id,
                "state": "draining" if state.draining else "active",
                "used_bytes": store.used_bytes,
                "capacity_bytes": store.capacity_bytes,
                "blocks": store.block_count,
                **counters(),
                **readthrough.shield_state(),
            }
        )

    async def drain(request: web.Request) -> web.Response:
        request["claims"].require_all_access("draining a node")
        log.info("node %s: drain requested over HTTP", state.node_id)
        state.stop.set()
        return _msgpack({"status": "draining"})

    async def cluster(_: web.Request) -> web.Response:
        """Every node's figures in one JSON document (the built-in dashboard polls this)."""
        nodes = await state.cluster_nodes()
        return web.json_response(
            {
                "cluster": state.cluster,
                "nodes": await collect_details(nodes, state.peer_ssl),
                "time": time.time(),
            }
        )

    async def prometheus_sd(_: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: every node of the cluster, from etcd."""
        nodes = await state.cluster_nodes()
        return web.json_response(
            [
                {
                    "targets": [n.addr],
                    "labels": {"cluster": state.cluster, "node": n.id, "state": n.state},
                }
                for n in nodes
            ]
        )

    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text. On a secured node its tenant labels are not for everyone: it
        needs a ``metrics`` right, from a signed request or (Prometheus cannot sign) an
        ``Authorization: Bearer <token>`` of a ``cachectl token create --metrics`` token."""
        if verifier is not None:
            header = request.headers.get("Authorization")
            if header is not None and header.startswith("Bearer "):
                verifier.verify_bearer(header, METRICS)
            else:
                verifier.verify("GET", request.raw_path, header).require_right(METRICS)
        state.report()
        CACHE_USED.set(store.used_bytes)
        CACHE_CAPACITY.set(store.capacity_bytes)
        CACHE_BLOCKS.set(store.block_count)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if state.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not state.joined:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok"})

    app = web.Application(
        middlewares=[make_middleware(state, verifier)], client_max_size=MAX_BLOCK_SIZE + 1
    )
    app.router.add_get("/v1/blocks/{id}", get_block)
    app.router.add_put("/v1/blocks/{id}", put_block)
    app.router.add_post("/v1/blocks/query", query_blocks)
    app.router.add_post("/v1/blocks/evict", evict_blocks)
    app.router.add_post("/v1/blocks/warm", warm_blocks)
    app.router.add_get("/v1/stats", stats)
    app.router.add_post("/v1/admin/drain", drain)
    app.router.add_get("/v1/prometheus-sd", prometheus_sd)
    app.router.add_get("/v1/cluster", cluster)
    dashboard.add_routes(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
