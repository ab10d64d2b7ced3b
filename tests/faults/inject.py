"""Fault scaffolding shared by the client and mount fault tests.

Victims are picked from the ring, so that the nodes made to fail are the owners of the
block a test reads, and :class:`Trickler` is a "node" that accepts block requests and
then answers them one byte a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.cluster import NodeInfo, node_key
from clientlib.etcd import connect
from clientlib.launcher import Node
from tests.conftest import Cluster

log = logging.getLogger(__name__)

#: Every fault test reads an object of two blocks; its victims own the first one.
OBJECT_SIZE = BS + BS // 2
#: Reasons of ``ringcache_client_fallbacks_total`` a fault test looks at.
REASONS = ("hedge", "hedge_origin", "timeout", "error")


@dataclass(frozen=True)
class Owned:
    """An object in the bucket and the owners (preference order) of its first block."""

    key: str
    url: str
    data: bytes
    owners: list[NodeInfo]


async def owned_object(
    client: CacheClient, s3: Any, bucket: str, primary: str | None = None, tries: int = 40
) -> Owned:
    """Put an object and return it with its first block's two owners on ``client``'s ring.

    With ``primary`` (a node id), keys are tried until that node is the block's first
    owner (one in ``len(ring)`` keys, on average).
    """
    for attempt in range(tries):
        key = f"fault-{attempt}.bin"
        data = os.urandom(OBJECT_SIZE)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        url = f"s3://{bucket}/{key}"
        info = await client.stat(url)
        owners = client.ring.owners(client.block_ref(info, 0).id, 2)
        if primary is None or owners[0].id == primary:
            return Owned(key, url, data, owners)
    raise AssertionError(f"node {primary} owned the first block of none of {tries} objects")


def node_at(cluster: Cluster, owner: NodeInfo) -> Node:
    """The cachenode process behind a ring entry."""
    return next(n for n in cluster.nodes if n.addr == owner.addr)


class Counts:
    """Client fallbacks by reason and blocks read from the origin, to compare two moments.

    ``metric(name, labels)`` reads one sample: the test process's registry for a
    ``CacheClient`` in the test, a mount's ``/metrics`` for a mount.
    """

    def __init__(self, metric: Callable[[str, str], float]) -> None:
        self._metric = metric
        self.values = self._read()
        self.started = time.monotonic()

    def _read(self) -> dict[str, float]:
        values = {
            reason: self._metric("ringcache_client_fallbacks_total", f'reason="{reason}"')
            for reason in REASONS
        }
        values["origin"] = self._metric("ringcache_client_block_reads_total", 'source="origin"')
        return values

    def since(self) -> tuple[dict[str, float], float]:
        """What each count grew by, and the seconds since this snapshot."""
        now = self._read()
        elapsed = time.monotonic() - self.started
        return {k: now[k] - self.values[k] for k in now}, elapsed


def check_no_stall(grew: dict[str, float], elapsed: float, *, raced: bool) -> None:
    """The read waited out no peer timeout; with ``raced``, it asked the origin because
    every owner had had its hedge delay (not because every owner had failed)."""
    what = f"read took {elapsed:.1f} s, fallbacks grew by {grew}"
    log.info("%s", what)
    assert grew["timeout"] == 0, f"a peer timeout was waited out: {what}"
    if raced:
        assert grew["hedge_origin"] >= 1, f"the origin was not raced against the owners: {what}"
        assert grew["origin"] >= 1, f"no block came from the origin: {what}"


class Trickler:
    """A node record in etcd whose server answers a block GET with a response head at
    once, then the body one byte a second: alive, connected and never done."""

    def __init__(self, etcd_url: str, cluster: str, node_id: str = "trickler") -> None:
        self._etcd_url = etcd_url
        self._cluster = cluster
        self.id = node_id
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> NodeInfo:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        info = NodeInfo(self.id, f"127.0.0.1:{port}", 1.0, 2**30, started_at=time.time())
        etcd = connect(self._etcd_url)
        try:
            await etcd.put(node_key(self._cluster, self.id), info.to_json())
        finally:
            await etcd.close()
        return info

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {BS}\r\n\r\n".encode())
            while True:
                await writer.drain()
                await asyncio.sleep(1.0)
                writer.write(b"\0")
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def stop(self) -> None:
        etcd = connect(self._etcd_url)
        try:
            await etcd.delete(node_key(self._cluster, self.id))
        finally:
            await etcd.close()
        if self._server is not None:
            self._server.close()
            for handler in list(self._handlers):
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
