"""The block routes of the node's aiohttp application: GET, PUT and the batch routes.

A GET is decided by the hit core (:mod:`cachenode.hitcore`) as on the fast path; here it
can also wait: for the disk, for a miss's origin fetch (:class:`ReadThrough`), for a fetch
already in flight, or for a proof over the bytes. Every input is bounded: block ids and
query values are checked before use, bodies are capped (:mod:`cachenode.bodies`,
:mod:`cachenode.batches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable

from aiohttp import web

from cachenode.batches import (
    MAX_WARM,
    ids_from_doc,
    msgpack_body,
    msgpack_response,
    refs_from_doc,
)
from cachenode.context import NodeContext
from cachenode.fairshare import Slot
from cachenode.hitcore import HOT_HEADER, RESULT_HEADER, HitCore
from cachenode.metrics import (
    BLOCK_HITS,
    GET_HIT_SECONDS,
    HIT_BYTES,
    REQUEST_SECONDS,
    SERVED_BYTES,
)
from cachenode.readthrough import ReadThrough
from cachenode.sendfile import plain_tcp, send_file, wait_flushed
from cachenode.store import BlockBytes, BlockFile, BlockPart, BlockStore
from clientlib.auth import DIGEST_HEADER, PROOF_HEADER, WRITE, body_digest, check_digest
from clientlib.blocks import MAX_FIELD, BlockRef, check_block_id
from clientlib.errors import BadRequest, RingcacheError
from clientlib.ranges import Span, parse_range

__all__ = ["BlockRoutes", "send_block_file"]

log = logging.getLogger(__name__)

_NOT_CACHED = {"error": "block not cached"}


@contextlib.asynccontextmanager
async def _resolved(data: Awaitable[bytes | None]) -> AsyncIterator[bytes | None]:
    """``data`` as :meth:`BlockRoutes._stream_when_ready` takes a body: bytes it owns."""
    yield await data


def _span(request: web.Request, length: int) -> Span:
    return parse_range(request.headers.getall("Range", ()), length)


class BlockRoutes:
    """The handlers of ``/v1/blocks/...``; each takes a request, as aiohttp calls it."""

    def __init__(
        self, store: BlockStore, readthrough: ReadThrough, node: NodeContext, core: HitCore
    ) -> None:
        self.store = store
        self.readthrough = readthrough
        self.node = node
        self.core = core

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/blocks/{id}", self.get_block)
        app.router.add_put("/v1/blocks/{id}", self.put_block)
        app.router.add_post("/v1/blocks/query", self.query_blocks)
        app.router.add_post("/v1/blocks/evict", self.evict_blocks)
        app.router.add_post("/v1/blocks/warm", self.warm_blocks)

    async def get_block(self, request: web.Request) -> web.StreamResponse:
        """A block, or the span of it a ``Range`` asks for: a hit, a miss, a joined fetch."""
        started = time.perf_counter()
        block_id = check_block_id(request.match_info["id"])
        hot = self.core.begin_get(block_id)
        try:
            return await self._serve_block(request, block_id, hot, started)
        finally:
            self.core.end_get(block_id)

    async def _serve_block(
        self, request: web.Request, block_id: str, hot: bool, started: float
    ) -> web.StreamResponse:
        # A hot lookup has no query string: skip parsing one into a MultiDict.
        fields = request.query if request.query_string else {}
        ref, proven = self.core.lookup(request["claims"], block_id, fields)
        if proven:
            return await self._serve_proven(request, block_id)
        asked = self._cached_span(request, block_id)
        cached = await self.store.open_block(block_id, part=None if asked is None else asked.part)
        if cached is None:
            if ref is not None:
                return await self._serve_miss(request, ref, block_id, hot, started)
            if not self.readthrough.fetching(block_id):
                return web.json_response(
                    _NOT_CACHED, status=404, headers=self.readthrough.lookup_headers()
                )
            return await self._serve_join(request, block_id)
        # The hit is counted here rather than by ReadThrough.cached, which reads the whole
        # block into memory: large hits are sent from the verified file instead.
        BLOCK_HITS.inc()
        headers = self.core.hit_headers(hot)
        try:
            # The span the store checked, or (no Range, or cached since that look) the
            # block's; a bad Range is refused here too, after which the fd is closed.
            span = asked or _span(request, cached.nbytes)
            HIT_BYTES.inc(span.nbytes)
            GET_HIT_SECONDS.observe(time.perf_counter() - started)
            if isinstance(cached, BlockPart):  # just the bytes of ``span``, read inline
                body = cached.data
            elif isinstance(cached, BlockBytes):
                body = cached.data[span.start : span.stop] if span.partial else cached.data
            else:
                response = web.StreamResponse(
                    status=span.status, headers={**headers, **span.headers()}
                )
                response.content_type = "application/octet-stream"
                response.content_length = span.nbytes
                return await send_block_file(request, response, block_id, cached, span)
            return web.Response(
                body=body, status=span.status, headers={**headers, **span.headers()}
            )
        finally:
            cached.close()

    def _cached_span(self, request: web.Request, block_id: str) -> Span | None:
        """The part a ``Range`` asks of a cached block, so the store checks only those
        bytes (None without a Range, or when the block is not cached: then it is a miss,
        whose span comes from the request's source parameters)."""
        if "Range" not in request.headers:
            return None
        length = self.store.length(block_id)
        return None if length is None else _span(request, length)

    async def _stream_when_ready(
        self,
        request: web.Request,
        response: web.StreamResponse,
        data: contextlib.AbstractAsyncContextManager[bytes | memoryview | None],
        span: Span | None = None,
    ) -> bool:
        """Send the headers now and the body (its ``span``) once ``data`` yields it; abort
        the connection if it yields None (the client sees a broken response, never a
        short one). The body is sent and flushed to the socket before ``data`` is left,
        since what it yields may be a buffer that is reused then
        (:meth:`ReadThrough.missed`)."""
        writer = await response.prepare(request)
        slot: Slot | None = request.get("slot")
        async with contextlib.AsyncExitStack() as stack:
            if slot is None:
                body = await stack.enter_async_context(data)
            else:
                # Waiting for the origin (or a peer) is not serving: hits may use the slot.
                async with slot.paused():
                    body = await stack.enter_async_context(data)
            if body is None:
                if request.transport is not None:
                    request.transport.abort()
                return False
            if span is not None and span.partial:
                body = memoryview(body)[span.start : span.stop]
            nbytes = len(body)
            await response.write(body)
            transport = request.transport
            if writer is None or transport is None or transport.is_closing():
                raise ConnectionResetError("client gone before its miss was sent")
            await wait_flushed(transport, writer.drain)
        await response.write_eof()
        SERVED_BYTES.labels("miss").inc(nbytes)
        return True

    async def _serve_miss(
        self, request: web.Request, ref: BlockRef, block_id: str, hot: bool, started: float
    ) -> web.StreamResponse:
        """A miss: headers at once, the body when the origin fetch is done.

        Answering early tells the client this node is alive and on it, so the client's
        hedging does not ask a second node to fetch the same block from the origin. An
        origin failure after the headers aborts the connection; the client then tries
        the next owner or the origin itself.
        """
        self.readthrough.check(ref)
        span = _span(request, ref.length)
        headers = {RESULT_HEADER: "miss", **span.headers()}
        if hot:
            headers[HOT_HEADER] = "1"
        response = web.StreamResponse(status=span.status, headers=headers)
        response.content_length = span.nbytes

        @contextlib.asynccontextmanager
        async def fetch() -> AsyncIterator[bytes | memoryview | None]:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    data = await stack.enter_async_context(self.readthrough.missed(ref, block_id))
                except RingcacheError as exc:
                    log.warning(
                        "miss of block %s of %s failed after headers: %s", block_id, ref.url, exc
                    )
                    data = None
                yield data

        if await self._stream_when_ready(request, response, fetch(), span):
            REQUEST_SECONDS.labels("get_miss").observe(time.perf_counter() - started)
        return response

    async def _serve_proven(self, request: web.Request, block_id: str) -> web.Response:
        """A lookup by id on a secured cluster (another node's handoff): the whole block,
        once it is here (a hit, or a fetch in flight joined), with this node's proof that
        it knows the cluster secret and sent these bytes (:meth:`Verifier.prove`). The
        asking node stores nothing without that proof, so a rogue server registered in
        etcd cannot get its bytes into the cache. No early headers: the proof covers the
        body, so it goes out once the body is known."""
        verifier = self.core.verifier
        assert verifier is not None
        data = await self.readthrough.cached(block_id)
        if data is None:
            return web.json_response(_NOT_CACHED, status=404)
        digest = await asyncio.to_thread(body_digest, data)
        proof = verifier.prove(request.headers["Authorization"], digest)
        SERVED_BYTES.labels("hit").inc(len(data))
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={RESULT_HEADER: "hit", PROOF_HEADER: proof},
        )

    async def _serve_join(self, request: web.Request, block_id: str) -> web.StreamResponse:
        """A lookup of a block this node is fetching right now: headers at once (so the
        asking node knows this one is alive, see cachenode.handoff), the body when the
        fetch is done; the connection is aborted if it fails. The length is not known
        before the body, so a ``Range`` is ignored here: the whole block comes back."""
        response = web.StreamResponse(headers={RESULT_HEADER: "miss"})
        await self._stream_when_ready(request, response, _resolved(self.readthrough.join(block_id)))
        return response

    async def put_block(self, request: web.Request) -> web.Response:
        """Fill-on-write: store a block a writer pushes, if everything about it holds.

        Checked before a byte of the body is read: the token's ``write`` right on the
        source, the cluster's block size, the object's version and size *now* in the
        origin (so no made-up version can take cache space), the exact block length,
        and room in the node's body budget. Then the body must arrive in time and match
        the SHA-256 the signature covers.
        """
        started = time.perf_counter()
        block_id = check_block_id(request.match_info["id"])
        ref = BlockRef.from_fields(block_id, request.query, self.node.block_size())
        request["claims"].require(ref.url, WRITE)
        if request.content_length is None:
            raise BadRequest("Content-Length is required")
        if request.content_length != ref.length:
            raise BadRequest(f"body must be the block's {ref.length} bytes")
        await self.readthrough.check_current(ref)
        declared = request.headers.get(DIGEST_HEADER)
        async with self.node.bodies.admit(ref.length):
            data = await self.node.bodies.read(request)
            if declared is not None and body_digest(data) != check_digest(declared):
                raise BadRequest(f"body does not match its {DIGEST_HEADER}")
            stored = await self.readthrough.fill(block_id, data)
        REQUEST_SECONDS.labels("put").observe(time.perf_counter() - started)
        return web.json_response({"stored": stored}, status=201 if stored else 507)

    async def query_blocks(self, request: web.Request) -> web.Response:
        """Which blocks are cached. By id alone for operators; a scoped token names each
        block's source (as for warm), so it learns nothing about blocks outside its
        scope."""
        doc = await msgpack_body(request, max_str_len=MAX_FIELD)
        if isinstance(doc, dict) and "blocks" in doc:
            refs = refs_from_doc(doc, request["claims"], self.node.block_size())
            return msgpack_response({"present": [block_id in self.store for block_id, _ in refs]})
        request["claims"].require_all_access("a presence query by block id alone")
        return msgpack_response({"present": [i in self.store for i in ids_from_doc(doc)]})

    async def evict_blocks(self, request: web.Request) -> web.Response:
        """Drop blocks from the store (operators only)."""
        request["claims"].require_all_access("evicting blocks")
        ids = ids_from_doc(await msgpack_body(request))
        return msgpack_response({"evicted": await self.store.evict(ids)})

    async def warm_blocks(self, request: web.Request) -> web.Response:
        """Fetch blocks into the store without sending them back (cachectl warmup)."""
        doc = await msgpack_body(request, max_str_len=MAX_FIELD)
        refs = refs_from_doc(doc, request["claims"], self.node.block_size(), MAX_WARM)

        async def warm(block_id: str, ref: BlockRef) -> tuple[str, int, str]:
            if block_id in self.store:
                return "cached", 0, ""
            try:
                fetched = await self.readthrough.warm(ref, block_id)
            except RingcacheError as exc:
                return "error", 0, f"{block_id}: {exc}"
            return ("fetched", fetched, "") if fetched else ("cached", 0, "")

        results = await asyncio.gather(*(warm(i, r) for i, r in refs))
        return msgpack_response(
            {
                "cached": sum(r[0] == "cached" for r in results),
                "fetched": sum(r[0] == "fetched" for r in results),
                "bytes": sum(r[1] for r in results),
                "errors": [r[2] for r in results if r[0] == "error"],
            }
        )


async def send_block_file(
    request: web.Request,
    response: web.StreamResponse,
    block_id: str,
    block: BlockFile,
    span: Span,
) -> web.StreamResponse:
    """Send the headers with aiohttp, then ``span`` of the verified block file: with
    ``sendfile`` on a plain TCP connection (:mod:`cachenode.sendfile`; aiohttp's
    ``FileResponse`` would read and write, as uvloop has no ``loop.sendfile``), through
    the transport on a TLS one, which encrypts. The file was verified before the first
    header byte (:meth:`BlockStore.open_block`), and the fd is the one that was.

    A failure after the headers (the client hung up, or the file cannot be read) aborts
    the connection, as a failed miss does: the client sees a short body and tries the
    next owner.
    """
    transport = request.transport
    if transport is not None and not plain_tcp(transport):
        data = await asyncio.to_thread(os.pread, block.fd, span.nbytes, span.start)
        if len(data) != span.nbytes:
            raise OSError(f"block file of {block_id} ended early")
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        return response
    writer = await response.prepare(request)
    if writer is None or transport is None or transport.is_closing():
        return response
    writer.send_headers()  # aiohttp holds them back to coalesce them with a body write
    try:
        await wait_flushed(transport, writer.drain)
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
