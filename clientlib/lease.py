"""A record in etcd that lives as long as the process holding it: a key put under a lease.

Nodes (``nodes/<id>``) and S3 gateways (``gateways/<id>``) register this way. A crashed
holder's record goes when its lease expires. While etcd is unreachable the holder keeps
working; when etcd returns and the lease expired meanwhile, the record is put again
under a new lease.
"""

from __future__ import annotations

import asyncio
import logging

import aetcd

from clientlib.etcd import ETCD_ERRORS, forget_token

__all__ = ["LeasedRecord"]

log = logging.getLogger(__name__)


class LeasedRecord:
    """One key of ``etcd`` holding ``value`` under a lease of ``ttl`` seconds, kept alive
    from :meth:`put` until :meth:`revoke`; ``what`` names the holder in log lines."""

    def __init__(self, etcd: aetcd.Client, key: bytes, ttl: int, what: str) -> None:
        self._etcd = etcd
        self._key = key
        self._ttl = ttl
        self._what = what
        self._value = b""
        self._lease: aetcd.Lease | None = None
        self._task: asyncio.Task[None] | None = None

    async def put(self, value: bytes) -> None:
        """Put ``value`` under the lease (taking one the first time) and keep it alive.

        Raises etcd's errors (:data:`ETCD_ERRORS`): the caller decides whether a holder
        that cannot register may go on.
        """
        self._value = value
        if self._lease is None:
            self._lease = await self._etcd.lease(self._ttl)
        await self._etcd.put(self._key, value, lease=self._lease)
        if self._task is None:
            self._task = asyncio.create_task(self._keepalive(), name=f"lease {self._what}")

    async def _keepalive(self) -> None:
        period = max(1.0, self._ttl / 3)
        healthy = True
        while True:
            await asyncio.sleep(period)
            try:
                reply = None if self._lease is None else await self._lease.refresh()
                if reply is None or reply.TTL <= 0:
                    log.warning("%s: lease expired, registering again", self._what)
                    # The new lease is kept only once the record is under it: a put
                    # that fails is tried again on the next round.
                    lease = await self._etcd.lease(self._ttl)
                    await self._etcd.put(self._key, self._value, lease=lease)
                    self._lease = lease
                if not healthy:
                    log.info("%s: etcd reachable again", self._what)
                healthy = True
            except ETCD_ERRORS as exc:
                if healthy:
                    log.warning("%s: etcd unreachable, still serving: %s", self._what, exc)
                healthy = False
                await forget_token(self._etcd, exc)

    async def revoke(self) -> None:
        """Stop the keepalive and revoke the lease, removing the record at once (if etcd
        cannot be reached, the record goes when the lease expires)."""
        if self._task is not None:
            self._task.cancel()
        try:
            if self._lease is not None:
                await self._lease.revoke()
        except ETCD_ERRORS as exc:
            log.warning("%s: could not revoke lease (it will expire): %s", self._what, exc)
