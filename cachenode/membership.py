"""The node's membership in etcd: a record under ``nodes/<id>`` kept alive by a lease
(:class:`clientlib.lease.LeasedRecord`).

A crashed node drops out of every client's ring when its lease expires. While etcd is
unreachable the node keeps serving (clients keep their last ring); when etcd returns and
the lease has expired meanwhile, the node registers again under a new lease.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from pathlib import Path

from clientlib.blocks import DEFAULT_BLOCK_SIZE
from clientlib.cluster import (
    ClusterConfig,
    NodeInfo,
    check_node_id,
    config_key,
    node_key,
    nodes_prefix,
)
from clientlib.etcd import ETCD_ERRORS, EtcdTarget, connect, etcd_error
from clientlib.gateways import GatewayInfo, gateway_records, gateways_prefix
from clientlib.lease import LeasedRecord
from clientlib.ring import node_records

__all__ = ["Membership", "stable_node_id"]

log = logging.getLogger(__name__)


class Membership:
    """Registers one node and keeps its lease alive until :meth:`leave`."""

    def __init__(self, etcd: EtcdTarget | str, cluster: str, info: NodeInfo, ttl: int = 10) -> None:
        self._target = EtcdTarget.of(etcd)
        self._cluster = cluster
        self.info = info
        self._etcd = connect(self._target)
        self._record = LeasedRecord(self._etcd, node_key(cluster, info.id), ttl, f"node {info.id}")
        self.cluster_config = ClusterConfig(DEFAULT_BLOCK_SIZE)

    async def join(self) -> None:
        """Register, creating the cluster config if this is the cluster's first node.

        Raises :class:`ConfigError` if etcd cannot be reached: a node that cannot join
        should say so at start, not serve blocks no client will route to it.
        """
        try:
            await asyncio.wait_for(self._ensure_config(), timeout=10)
            await asyncio.wait_for(self._record.put(self.info.to_json()), timeout=10)
        except ETCD_ERRORS as exc:
            raise etcd_error(self._target, exc) from None
        log.info("node %s joined cluster %s as %s", self.info.id, self._cluster, self.info.addr)

    async def _ensure_config(self) -> None:
        key = config_key(self._cluster)
        tx = self._etcd.transactions
        await self._etcd.transaction(
            compare=[tx.version(key) == 0],
            success=[tx.put(key, ClusterConfig().to_json())],
            failure=[],
        )
        got = await self._etcd.get(key)
        if got is not None:
            self.cluster_config = ClusterConfig.from_json(got.value)

    async def list_nodes(self) -> list[NodeInfo]:
        """Every node record of the cluster, sorted by id (see :func:`node_records`)."""
        return node_records(self._cluster, await self._etcd.get_prefix(nodes_prefix(self._cluster)))

    async def list_gateways(self) -> list[GatewayInfo]:
        """Every S3 gateway record of the cluster, sorted by id (for the dashboard only)."""
        prefix = gateways_prefix(self._cluster)
        return gateway_records(self._cluster, await self._etcd.get_prefix(prefix))

    async def set_state(self, state: str) -> None:
        """Publish a new state (``draining`` takes the node out of every client's ring)."""
        self.info = dataclasses.replace(self.info, state=state)  # type: ignore[arg-type]
        try:
            await self._record.put(self.info.to_json())
        except ETCD_ERRORS as exc:
            log.warning("node %s: could not publish state %s: %s", self.info.id, state, exc)

    async def leave(self) -> None:
        """Stop the keepalive and revoke the lease, removing the record at once."""
        await self._record.revoke()
        await self._etcd.close()


def stable_node_id(cache_dir: Path, requested: str | None) -> str:
    """The node's id, kept in ``<first cache dir>/node-id`` so it survives restarts.

    A restarted node must come back under the same id: the ring then gives it the same
    blocks, and the blocks already on its disk are hits again.
    """
    path = cache_dir / "node-id"
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    node_id = requested or kept or f"{socket.gethostname().split('.')[0]}-{uuid.uuid4().hex[:8]}"
    check_node_id(node_id)
    if node_id != kept:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        os.replace(tmp, path)
    return node_id
