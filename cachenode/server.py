"""cachenode's aiohttp application: its routes and middleware, put together.

The API is documented in docs/http-api.md. The handlers live by concept:
:mod:`cachenode.blockroutes` (blocks), :mod:`cachenode.noderoutes` (the node's own
figures, health and drain) and :mod:`cachenode.dashboard`; :mod:`cachenode.middleware`
authenticates and turns :class:`RingcacheError` into a 4xx/5xx with a JSON
``{"error": ...}`` body. Block hits are decided by :mod:`cachenode.hitcore`, which the hit
fast path (:mod:`cachenode.fasthits`) shares.
"""

from __future__ import annotations

from aiohttp import web

from cachenode import dashboard
from cachenode.blockroutes import BlockRoutes
from cachenode.context import NodeContext
from cachenode.hitcore import HitCore
from cachenode.middleware import make_middleware
from cachenode.noderoutes import NodeRoutes
from cachenode.readthrough import ReadThrough
from cachenode.store import BlockStore
from cachenode.verifier import Verifier
from clientlib.blocks import MAX_BLOCK_SIZE

__all__ = ["make_app"]


def make_app(
    store: BlockStore,
    readthrough: ReadThrough,
    node: NodeContext,
    verifier: Verifier | None = None,
) -> web.Application:
    """Build the node's aiohttp application (``verifier`` set: signed requests only)."""
    core = HitCore(node, verifier)
    app = web.Application(
        middlewares=[make_middleware(node, core)], client_max_size=MAX_BLOCK_SIZE + 1
    )
    BlockRoutes(store, readthrough, node, core).add_to(app)
    NodeRoutes(store, readthrough, node, verifier).add_to(app)
    dashboard.add_routes(app, node)
    return app
