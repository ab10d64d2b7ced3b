"""What a node's request handlers share beyond its store: identity, lifecycle, load.

One :class:`NodeContext` per node, built by ``cachenode.__main__`` and handed to the
aiohttp routes (:mod:`cachenode.server`) and the hit fast path (:mod:`cachenode.fasthits`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable

from cachenode.bodies import BodyBudget
from cachenode.fairshare import FairScheduler
from cachenode.hotblocks import HotBlocks
from clientlib.blocks import DEFAULT_BLOCK_SIZE
from clientlib.cluster import NodeInfo
from clientlib.gateways import GatewayInfo

__all__ = ["NodeContext"]


class NodeContext:
    """What the handlers need to know about the node beyond its store.

    ``cluster_nodes`` lists the cluster's members from etcd (for service discovery and
    the dashboard), ``cluster_gateways`` its S3 gateways (for the dashboard); ``stop`` is
    set to drain the node, by SIGTERM or ``cachectl drain``; ``block_size`` is the
    cluster's setting, which block geometry is taken from (never from a request alone).
    """

    def __init__(
        self,
        node_id: str,
        cluster: str = "default",
        cluster_nodes: Callable[[], Awaitable[list[NodeInfo]]] | None = None,
        serve_slots: int = 64,
        block_size: Callable[[], int] = lambda: DEFAULT_BLOCK_SIZE,
        cluster_gateways: Callable[[], Awaitable[list[GatewayInfo]]] | None = None,
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
        #: Block requests in flight on either path (see :meth:`enter`), for draining.
        self.inflight = 0
        self.last_request = time.monotonic()
        self.fair = FairScheduler(serve_slots)
        #: Hot blocks, counted by both hit paths (:class:`cachenode.hitcore.HitCore`).
        self.hot = HotBlocks()
        #: Called before the node's counters are read (/metrics, /v1/stats): the hit fast
        #: path tallies its counts in plain ints and adds them to Prometheus here.
        self.before_report: list[Callable[[], None]] = []
        self._cluster_nodes = cluster_nodes
        self._cluster_gateways = cluster_gateways

    def enter(self) -> None:
        """Count a block request in (a drain waits for none to be in flight)."""
        self.inflight += 1

    def leave(self) -> None:
        """Count a block request out, and note when the last one ended."""
        self.inflight -= 1
        self.last_request = time.monotonic()

    def report(self) -> None:
        """Bring the node's Prometheus counters up to date (see :attr:`before_report`)."""
        for hook in self.before_report:
            hook()

    async def cluster_nodes(self) -> list[NodeInfo]:
        """The cluster's members as etcd lists them (none if the node has no etcd view)."""
        return [] if self._cluster_nodes is None else await self._cluster_nodes()

    async def cluster_gateways(self) -> list[GatewayInfo]:
        """The cluster's S3 gateways as etcd lists them (for the dashboard only)."""
        return [] if self._cluster_gateways is None else await self._cluster_gateways()
