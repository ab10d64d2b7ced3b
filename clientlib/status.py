"""The cluster's status as ``cachectl status`` reports it (fields fixed by the design).

Membership comes from etcd, figures from each node's ``/v1/stats``; a node that is
registered but does not answer is listed with state ``unreachable`` rather than dropped,
because that is exactly what an operator needs to see.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp

from clientlib.cluster import ClusterConfig, NodeInfo, config_key, nodes_prefix
from clientlib.etcd import ETCD_ERRORS, EtcdTarget, connect, etcd_error
from clientlib.ring import node_records
from clientlib.tls import client_context

__all__ = ["cluster_status", "collect_details", "collect_status", "list_nodes"]


async def list_nodes(etcd: EtcdTarget | str, cluster: str) -> tuple[ClusterConfig, list[NodeInfo]]:
    """The cluster config and node records, straight from etcd (no watch)."""
    try:
        async with connect(etcd, timeout=5) as client:
            raw_config = await client.get(config_key(cluster))
            records = await client.get_prefix(nodes_prefix(cluster))
    except ETCD_ERRORS as exc:
        raise etcd_error(etcd, exc) from None
    config = ClusterConfig.from_json(raw_config.value) if raw_config else ClusterConfig()
    return config, node_records(cluster, records)


def _ratio(hits: int, misses: int) -> float:
    return round(hits / (hits + misses), 4) if hits + misses else 0.0


async def _node_stats(
    session: aiohttp.ClientSession, node: NodeInfo
) -> tuple[dict[str, Any], dict[str, int]]:
    extra: dict[str, int] = {}
    row: dict[str, Any] = {
        "id": node.id,
        "addr": node.addr,
        "state": node.state,
        "capacity_bytes": node.capacity_bytes,
        "used_bytes": 0,
        "blocks": 0,
        "hits": 0,
        "misses": 0,
    }
    try:
        async with session.get(f"{node.url}/v1/stats") as resp:
            resp.raise_for_status()
            stats = await resp.json()
        for key in ("capacity_bytes", "used_bytes", "blocks", "hits", "misses"):
            row[key] = int(stats.get(key, 0))
        # Beyond the design's fields: what `cachectl top` and the dashboard show.
        for key in ("hit_bytes", "miss_bytes", "origin_bytes", "origin_requests", "evictions"):
            extra[key] = int(stats.get(key, 0))
    except (TimeoutError, aiohttp.ClientError, ValueError):
        row["state"] = "unreachable"
    row["hit_rate"] = _ratio(row["hits"], row["misses"])
    return row, extra


async def cluster_status(
    etcd: EtcdTarget | str, cluster: str, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """``{"cluster", "block_size", "hit_rate", "nodes": [...]}`` as in the design."""
    config, nodes = await list_nodes(etcd, cluster)
    return await collect_status(cluster, config.block_size, nodes, ssl_context)


def _session(ssl_context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=5),
        connector=aiohttp.TCPConnector(ssl=ssl_context or client_context(None)),
    )


async def collect_status(
    cluster: str,
    block_size: int,
    nodes: list[NodeInfo],
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Ask each node for its figures and add them up."""
    async with _session(ssl_context) as session:
        results = await asyncio.gather(*(_node_stats(session, n) for n in nodes))
    rows = [row for row, _ in results]
    hits = sum(r["hits"] for r in rows)
    misses = sum(r["misses"] for r in rows)
    return {
        "cluster": cluster,
        "block_size": block_size,
        "hit_rate": _ratio(hits, misses),
        "nodes": rows,
    }


async def collect_details(
    nodes: list[NodeInfo], ssl_context: ssl.SSLContext | None = None
) -> list[dict[str, Any]]:
    """Per-node rows with byte and origin counters too (``cachectl top``, dashboard)."""
    async with _session(ssl_context) as session:
        results = await asyncio.gather(*(_node_stats(session, n) for n in nodes))
    return [row | extra for row, extra in results]
