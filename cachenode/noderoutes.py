"""The node's own routes: its figures, health, drain, and the cluster view it serves.

``/v1/stats``, ``/v1/cluster`` and ``/v1/prometheus-sd`` carry no block data and are
open; ``/metrics`` names tenants, so a secured node asks for the ``metrics`` right;
``/v1/admin/drain`` needs an all-access token (checked by the middleware's claims).
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cachenode.batches import msgpack_response
from cachenode.context import NodeContext
from cachenode.metrics import CACHE_BLOCKS, CACHE_CAPACITY, CACHE_USED
from cachenode.readthrough import ReadThrough
from cachenode.store import BlockStore
from cachenode.verifier import Verifier
from clientlib.auth import METRICS
from clientlib.status import collect_details

__all__ = ["NodeRoutes", "counters"]

log = logging.getLogger(__name__)


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


class NodeRoutes:
    """The handlers of the node's own routes; each takes a request, as aiohttp calls it."""

    def __init__(
        self,
        store: BlockStore,
        readthrough: ReadThrough,
        node: NodeContext,
        verifier: Verifier | None,
    ) -> None:
        self.store = store
        self.readthrough = readthrough
        self.node = node
        self.verifier = verifier

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/stats", self.stats)
        app.router.add_post("/v1/admin/drain", self.drain)
        app.router.add_get("/v1/prometheus-sd", self.prometheus_sd)
        app.router.add_get("/v1/cluster", self.cluster)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)

    async def stats(self, _: web.Request) -> web.Response:
        """This node's figures (``cachectl status``, ``top`` and the dashboard read them)."""
        self.node.report()
        store = self.store
        return web.json_response(
            {
                "id": self.node.node_id,
                "state": "draining" if self.node.draining else "active",
                "used_bytes": store.used_bytes,
                "capacity_bytes": store.capacity_bytes,
                "blocks": store.block_count,
                **counters(),
                **self.readthrough.shield_state(),
            }
        )

    async def drain(self, request: web.Request) -> web.Response:
        """Start draining the node, as SIGTERM does (``cachectl drain``)."""
        request["claims"].require_all_access("draining a node")
        log.info("node %s: drain requested over HTTP", self.node.node_id)
        self.node.stop.set()
        return msgpack_response({"status": "draining"})

    async def cluster(self, _: web.Request) -> web.Response:
        """Every node's figures in one JSON document (the built-in dashboard polls this)."""
        nodes = await self.node.cluster_nodes()
        return web.json_response(
            {
                "cluster": self.node.cluster,
                "nodes": await collect_details(nodes, self.node.peer_ssl),
                "time": time.time(),
            }
        )

    async def prometheus_sd(self, _: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: every node of the cluster, from etcd."""
        nodes = await self.node.cluster_nodes()
        cluster = self.node.cluster
        return web.json_response(
            [
                {
                    "targets": [n.addr],
                    "labels": {"cluster": cluster, "node": n.id, "state": n.state},
                }
                for n in nodes
            ]
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text. On a secured node its tenant labels are not for everyone: it
        needs a ``metrics`` right, from a signed request or (Prometheus cannot sign) an
        ``Authorization: Bearer <token>`` of a ``cachectl token create --metrics`` token."""
        if self.verifier is not None:
            header = request.headers.get("Authorization")
            if header is not None and header.startswith("Bearer "):
                self.verifier.verify_bearer(header, METRICS)
            else:
                self.verifier.verify("GET", request.raw_path, header).require_right(METRICS)
        self.node.report()
        CACHE_USED.set(self.store.used_bytes)
        CACHE_CAPACITY.set(self.store.capacity_bytes)
        CACHE_BLOCKS.set(self.store.block_count)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        """200 once the node has joined and until it drains; 503 before and after."""
        if self.node.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not self.node.joined:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok"})
