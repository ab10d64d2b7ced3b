"""The gateway's record in etcd (``gateways/<id>``): where the nodes' dashboards read its
``/metrics``. It puts the gateway on no ring: see :mod:`clientlib.gateways`."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aetcd

from clientlib.etcd import ETCD_ERRORS, EtcdTarget, connect, etcd_error
from clientlib.gateways import GatewayInfo, gateway_key
from clientlib.lease import LeasedRecord

__all__ = ["Registration"]

log = logging.getLogger(__name__)

#: Seconds a stopped gateway's record outlives it when it could not revoke its lease.
LEASE_TTL = 10


def gateway_id(listen_port: int) -> str:
    """This host's short name and the S3 port: unique per gateway process on a host."""
    return f"{socket.gethostname().split('.')[0]}-{listen_port}"


class Registration:
    """Registers one gateway under a lease kept alive until :meth:`leave`."""

    def __init__(self, etcd: EtcdTarget, cluster: str, info: GatewayInfo) -> None:
        self._target = etcd
        self.info = info
        self._etcd: aetcd.Client = connect(etcd)
        self._record = LeasedRecord(
            self._etcd, gateway_key(cluster, info.id), LEASE_TTL, f"gateway {info.id}"
        )

    @classmethod
    def of(
        cls, etcd: EtcdTarget, cluster: str, listen_port: int, metrics_addr: str
    ) -> Registration:
        return cls(etcd, cluster, GatewayInfo(gateway_id(listen_port), metrics_addr, time.time()))

    async def join(self) -> None:
        """Put the record. The record is only for dashboards: if etcd refuses it (a role
        without write on ``gateways/``) or cannot be reached, the gateway serves anyway,
        unregistered, and says so in its log."""
        try:
            await asyncio.wait_for(self._record.put(self.info.to_json()), timeout=10)
        except ETCD_ERRORS as exc:
            log.warning(
                "gateway %s not registered, so no dashboard shows it: %s",
                self.info.id,
                etcd_error(self._target, exc),
            )
            return
        log.info("gateway %s registered, metrics at %s", self.info.id, self.info.metrics_addr)

    async def leave(self) -> None:
        """Remove the record at once (or, without etcd, when its lease expires)."""
        await self._record.revoke()
        await self._etcd.close()
