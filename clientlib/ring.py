"""The consistent-hash ring of cache nodes, and the etcd watch that keeps it current.

:class:`Ring` is an immutable snapshot built with uhashring; a block's preference list
is its first distinct owners clockwise from the block id. Draining nodes are left out, so
their blocks move to the next owners before they go. :class:`RingWatcher` rebuilds the
snapshot on every change under the cluster's etcd prefix and keeps the last good ring
(and block size) while etcd is unreachable: a client keeps working with the nodes it knew.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import xxhash
from uhashring import HashRing

from clientlib.blocks import DEFAULT_BLOCK_SIZE
from clientlib.cluster import (
    ClusterConfig,
    NodeInfo,
    check_cluster_name,
    cluster_prefix,
    config_key,
    nodes_prefix,
)
from clientlib.errors import BadRequest
from clientlib.etcd import ETCD_ERRORS, EtcdTarget, connect, etcd_error, forget_token, misconfigured

__all__ = ["Ring", "RingWatcher", "node_records", "read_records"]

log = logging.getLogger(__name__)

#: Ring points of a node of average weight: the fewest that keep max/mean load <= 1.1 at
#: 100 nodes with some margin (the sweep is in loadtest/results/ring_sim.md).
VNODES = 640
MIN_VNODES = 160
MAX_POINTS = 160_000
#: Seconds :meth:`RingWatcher.close` waits for the watch to stop, and for etcd to close.
CLOSE_TIMEOUT = 2.0


def _point(key: str) -> int:
    """Ring position of a key or a node's point: xxh3, which keeps a 1000-node ring quick
    to build (uhashring's default, md5, does not; see loadtest/results/ring_sim.md)."""
    return xxhash.xxh3_64_intdigest(key.encode())


class Ring:
    """An immutable snapshot of the active nodes on a consistent-hash ring.

    uhashring places the points; lookups walk a sorted copy of them with ``bisect``,
    because uhashring's own ``range()`` copies the tail of the point list on every call.
    """

    def __init__(
        self, nodes: Iterable[NodeInfo] = (), vnodes: int = VNODES, with_draining: bool = False
    ) -> None:
        self.nodes: dict[str, NodeInfo] = {n.id: n for n in nodes}
        active = [n for n in self.nodes.values() if with_draining or n.state == "active"]
        self._active = {n.id: n for n in active}
        self._keys: list[int] = []
        self._names: list[str] = []
        if active:
            # Past a few hundred nodes the point count, not balance, is what hurts: keep
            # the ring under MAX_POINTS so a 1000-node ring still builds in well under a
            # second, at some cost in balance.
            vnodes = min(vnodes, max(MIN_VNODES, MAX_POINTS // len(active)))
            mean = sum(max(n.weight, 1e-9) for n in active) / len(active)
            ring = HashRing(
                nodes={
                    n.id: {
                        # Points are named "<id>-<k>", so a node's first points are the
                        # same whatever its count: a weight change only adds or drops a
                        # few, and keys move in proportion.
                        "vnodes": min(20 * vnodes, max(8, round(vnodes * n.weight / mean))),
                        "weight": 1,
                    }
                    for n in active
                },
                hash_fn=_point,
            )
            points = ring.get_points()
            self._keys = [k for k, _ in points]
            self._names = [name for _, name in points]

    def __len__(self) -> int:
        return len(self._active)

    def points(self) -> list[tuple[int, str]]:
        """The ring's points in order, as ``(position, node id)`` (for analysis tools)."""
        return list(zip(self._keys, self._names, strict=True))

    @staticmethod
    def position(key: str) -> int:
        """Where ``key`` (a block id) lands on the ring."""
        return _point(key)

    def without(self, node_id: str) -> Ring:
        """The ring as it would be without ``node_id`` (where its blocks came from)."""
        return Ring((n for n in self.nodes.values() if n.id != node_id), with_draining=True)

    def owners(self, block_id: str, count: int = 2) -> list[NodeInfo]:
        """The first ``count`` distinct active nodes for ``block_id``, in preference order."""
        keys, names = self._keys, self._names
        if not keys:
            return []
        want = min(count, len(self._active))
        start = bisect.bisect(keys, _point(block_id))
        out: list[str] = []
        for step in range(len(keys)):
            name = names[(start + step) % len(keys)]
            if name not in out:
                out.append(name)
                if len(out) == want:
                    break
        return [self._active[name] for name in out]

    def read_order(
        self, block_id: str, count: int, *, replicas: int = 1, hot: bool = False
    ) -> list[NodeInfo]:
        """The first ``count`` owners of ``block_id`` in the order a reader tries them: the
        primary first; for a ``hot`` block a random one of its first ``replicas`` owners
        first, so that the readers of one hot block spread over its replicas."""
        if not hot:
            return self.owners(block_id, count)
        owners = self.owners(block_id, max(replicas, count))
        pick = random.randrange(min(replicas, len(owners))) if owners else 0
        return [owners[pick], *owners[:pick], *owners[pick + 1 :]][:count]


class _Entry(Protocol):
    """An etcd key-value pair as aetcd returns it."""

    key: bytes
    value: bytes


class _Record(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Record)


def read_records(
    prefix: bytes, entries: Iterable[_Entry], parse: Callable[[bytes], R], what: str
) -> list[R]:
    """The records filed under ``prefix + <id>`` among etcd ``entries``, sorted by id.

    Entries outside ``prefix`` are ignored; a record ``parse`` refuses (:class:`BadRequest`),
    or one filed under another id's key, is skipped with a warning, so no reader uses it.
    """
    records: list[R] = []
    for kv in entries:
        if not kv.key.startswith(prefix):
            continue
        try:
            record = parse(kv.value)
        except BadRequest as exc:
            log.warning("skipping %s record %r: %s", what, kv.key, exc)
            continue
        if kv.key != prefix + record.id.encode():
            log.warning("skipping %s record %r: it names %s %s", what, kv.key, what, record.id)
        else:
            records.append(record)
    return sorted(records, key=lambda r: r.id)


def node_records(cluster: str, entries: Iterable[_Entry]) -> list[NodeInfo]:
    """The node records among etcd ``entries`` of ``cluster``, sorted by id: the one reader
    of ``nodes/<id>`` records for clients, nodes and cachectl (see :func:`read_records`)."""
    return read_records(nodes_prefix(cluster), entries, NodeInfo.from_json, "node")


class RingWatcher:
    """Keeps a :class:`Ring` and the cluster config in step with etcd.

    Each round reads the whole cluster prefix, then watches it from the next revision;
    any event (or ``resync`` seconds without one, which also covers a watch that silently
    died with its etcd) starts the next round. Errors keep the previous ring.

    ``tls_only`` (a client or node given the cluster's CA) leaves out records of nodes
    that do not serve TLS: a record someone wrote into etcd to point at a plain-HTTP
    server of theirs must not downgrade the client past its certificate check.
    """

    def __init__(
        self,
        etcd: EtcdTarget | str,
        cluster: str,
        resync: float = 5.0,
        *,
        tls_only: bool = False,
    ) -> None:
        self._tls_only = tls_only
        self._target = EtcdTarget.of(etcd)
        self._url = self._target.url
        self.cluster = check_cluster_name(cluster)
        self._resync = resync
        self.ring = Ring()
        self.config = ClusterConfig(DEFAULT_BLOCK_SIZE)
        self._etcd = connect(self._target)
        self._refusal: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.synced = False

    async def start(self, wait: float = 5.0) -> None:
        """Start watching; wait up to ``wait`` seconds for a first ring.

        An unreachable etcd is not an error (reads go to the origin until it is back);
        an etcd that refuses our credentials or certificate is a :class:`ConfigError`: a
        misconfigured client must not quietly send every read to the origin.
        """
        self._task = asyncio.create_task(self._run(), name=f"ring-watch-{self.cluster}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), wait)
        if self._refusal is not None and not self.synced:
            await self.close()
            raise etcd_error(self._target, self._refusal)
        if not self.synced:
            log.warning("etcd at %s unreachable: no ring yet, reading from the origin", self._url)

    async def wait_changed(self, timeout: float) -> bool:
        """Wait for the next ring update (tests and tools use this)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop watching. Bounded: after etcd was paused, a watch stream can sit in a gRPC
        read that ignores cancellation, and a client (or a mount unmounting) must not hang
        on it; closing the etcd channel below ends such a read."""
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
            if not done:
                log.warning("ring watch of %s did not stop in %.0fs", self.cluster, CLOSE_TIMEOUT)
        with contextlib.suppress(*ETCD_ERRORS):
            await asyncio.wait_for(self._etcd.close(), CLOSE_TIMEOUT)

    async def _load(self) -> int:
        prefix = cluster_prefix(self.cluster)
        result = await self._etcd.get_prefix(prefix)
        nodes: list[NodeInfo] = []
        for node in node_records(self.cluster, result):
            if self._tls_only and node.scheme != "https":
                log.warning("skipping node %s at %s: not TLS, and a CA is set", node.id, node.addr)
            else:
                nodes.append(node)
        for kv in result:
            if kv.key == config_key(self.cluster):
                try:
                    self.config = ClusterConfig.from_json(kv.value)
                except BadRequest as exc:
                    log.warning("keeping block size %d: %s", self.config.block_size, exc)
        old = set(self.ring.nodes.items())
        if not self.synced or set((n.id, n) for n in nodes) != old:
            # Built off the event loop: a large ring takes a noticeable fraction of a second.
            self.ring = await asyncio.to_thread(Ring, nodes)
            log.info(
                "ring of cluster %s: %d active of %d nodes",
                self.cluster,
                len(self.ring),
                len(nodes),
            )
        self.synced = True
        self._changed.set()
        return int(result.header.revision)

    async def _run(self) -> None:
        failures = 0
        while True:
            watch = None
            try:
                revision = await self._load()
                failures = 0
                watch = await self._etcd.watch_prefix(
                    cluster_prefix(self.cluster), start_revision=revision + 1
                )
                events = aiter(watch)
                with contextlib.suppress(asyncio.TimeoutError, StopAsyncIteration):
                    await asyncio.wait_for(anext(events), self._resync)
            except ETCD_ERRORS as exc:
                failures += 1
                if misconfigured(exc) and not self.synced:
                    self._refusal = exc
                    self._changed.set()
                await forget_token(self._etcd, exc)
                if failures == 1:
                    log.warning("etcd at %s unreachable, keeping the last ring: %s", self._url, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))
            finally:
                if watch is not None:
                    # Bounded: cancelling a watch whose stream is mid-event can hang.
                    # AttributeError: aetcd drops its watcher when the client is closed
                    # (forget_token above, after an auth error; close() after its
                    # timeout), and cancel() then fails on it. Nothing is left to cancel,
                    # and the loop must go on following the ring.
                    with contextlib.suppress(*ETCD_ERRORS, AttributeError):
                        await asyncio.wait_for(watch.cancel(), 1.0)
