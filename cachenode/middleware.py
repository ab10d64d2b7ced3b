"""The node's aiohttp middleware: authentication, fair share, drain counting, JSON errors.

Data and admin routes are authenticated (:meth:`HitCore.claims`, the claims are put in
``request["claims"]``); ``/metrics``, ``/healthz`` and the stats routes carry no data and
stay open (Prometheus and probes have no token; ``/metrics`` checks its own right). Block
GETs take a serving slot in their tenant's turn (:mod:`cachenode.fairshare`). Errors
become a JSON ``{"error": ...}`` with their status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from cachenode.batches import MAX_BATCH_BODY
from cachenode.context import NodeContext
from cachenode.hitcore import HitCore
from cachenode.metrics import REQUESTS_REFUSED, TENANT_SERVED_BYTES
from clientlib.auth import DIGEST_HEADER, body_digest, check_digest
from clientlib.errors import RingcacheError

__all__ = ["Handler", "errors_middleware", "make_middleware"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refused(reason: str) -> None:
    REQUESTS_REFUSED.labels(reason).inc()


def make_middleware(
    node: NodeContext, core: HitCore
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The node's one middleware (see the module docstring)."""
    signing = core.verifier is not None

    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            # Batch bodies are read here, within the node's body budget, before anything
            # else: the signature covers their digest.
            if request.content_length is None or request.content_length > MAX_BATCH_BODY:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=MAX_BATCH_BODY, actual_size=request.content_length or 0
                )
            async with node.bodies.admit(request.content_length):
                body = await node.bodies.read(request)
                return await signed(request, handler, body_digest(body) if signing else "")
        digest = ""
        if request.method == "PUT" and signing:
            # The body is checked against this declared digest once read (put_block), so
            # the signature is checked before a byte of it is taken into memory.
            digest = check_digest(request.headers.get(DIGEST_HEADER))
        return await signed(request, handler, digest)

    async def signed(request: web.Request, handler: Handler, digest: str) -> web.StreamResponse:
        request["claims"] = core.claims(
            request.method, request.raw_path, request.headers.get("Authorization"), digest
        )
        return await fair(request, handler)

    async def fair(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Block GETs take a serving slot in their tenant's turn (cachenode.fairshare)."""
        if request.method != "GET":
            return await handler(request)
        tenant = request["claims"].tenant
        async with node.fair.slot(tenant, node.block_size()) as slot:
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
        node.enter()
        try:
            return await errors_middleware(request, partial(authenticated, handler=handler))
        finally:
            node.leave()

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
