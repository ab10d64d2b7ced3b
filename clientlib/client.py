"""CacheClient: the read path every client shares (mountd, cachectl, users' jobs).

A read becomes block reads; each block is looked up in the local memory tier, then asked
of its owners on the ring in preference order, then read straight from the origin. A slow
or dead owner costs at most its timeout and is counted in
``ringcache_client_fallbacks_total{reason}``: a job never fails because a cache node did.
Concurrent reads of one block inside a client share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp
import cachetools
import msgpack
from yarl import URL

from clientlib.auth import Credentials, body_digest
from clientlib.blocks import DEFAULT_BLOCK_SIZE, BlockRef, slices_for_range
from clientlib.cluster import NodeInfo
from clientlib.errors import BadRequest, OriginError, VersionMismatch
from clientlib.metrics import CLIENT_BLOCK_READS, CLIENT_FALLBACKS
from clientlib.origin import ObjectInfo, Origin, Origins
from clientlib.peerwire import PeerReply, PeerWire
from clientlib.ring import Ring, RingWatcher
from clientlib.tls import client_context

__all__ = ["CacheClient"]

log = logging.getLogger(__name__)


def _asked_for(reply: PeerReply, length: int, span: tuple[int, int] | None) -> bytes | None:
    """The bytes asked for from a node's answer, or ``None`` if it does not hold them.

    A node may answer a ranged request with the whole block (a lookup it joins to a
    fetch in flight does), so a whole block is sliced here.
    """
    if reply.status == 200 and len(reply.body) == length:
        return reply.body if span is None else reply.body[span[0] : span[1]]
    if span is not None and reply.status == 206:
        start, stop = span
        expected = f"bytes {start}-{stop - 1}/{length}"
        if reply.headers.get("content-range") == expected and len(reply.body) == stop - start:
            return reply.body
    return None


class CacheClient:
    """Reads objects through the cache cluster ``cluster`` registered in ``etcd``.

    ``etcd=None`` gives a client with no cluster (every block from the origin), which is
    what a job falls back to when it has no cache at all. Use as an async context manager.
    """

    def __init__(
        self,
        etcd: str | None = None,
        cluster: str = "default",
        *,
        memory_cache_bytes: int = 128 * 1024 * 1024,
        peer_timeout: float = 60.0,
        peer_read_timeout: float = 15.0,
        hedge_delay: float = 1.0,
        connect_timeout: float = 1.0,
        owners_to_try: int = 2,
        parallelism: int = 16,
        stat_ttl: float = 1.0,
        origins: Origins | None = None,
        token_file: str | None = None,
        origin_max_inflight: int = 8,
        ca_file: str | None = None,
    ) -> None:
        self._watcher = RingWatcher(etcd, cluster) if etcd else None
        self._origins = origins or Origins()
        self._owners_to_try = owners_to_try
        self._auth = Credentials.from_file(token_file)
        self._ssl = client_context(ca_file)
        self._hedge_delay = hedge_delay
        # Direct origin reads are the fallback when no owner answers: bounded per client,
        # so a cache outage does not turn hundreds of jobs into an origin stampede.
        self._origin_slots = asyncio.Semaphore(origin_max_inflight)
        self._timeout = aiohttp.ClientTimeout(
            total=peer_timeout, sock_connect=connect_timeout, sock_read=peer_read_timeout
        )
        self._memory: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(
            maxsize=memory_cache_bytes, getsizeof=len
        )
        self._stats: cachetools.TTLCache[str, ObjectInfo] = cachetools.TTLCache(
            maxsize=65536, ttl=stat_ttl
        )
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        # Blocks a node flagged as hot: for a while, reads of them pick one of the
        # block's first `replicas` owners at random instead of always the first.
        self._hot: cachetools.TTLCache[str, bool] = cachetools.TTLCache(maxsize=4096, ttl=10)
        self._parallel = asyncio.Semaphore(parallelism)
        self._session: aiohttp.ClientSession | None = None
        # Block GETs, the bulk of the bytes, bypass aiohttp (see clientlib.peerwire).
        self._wire = PeerWire(connect_timeout, peer_read_timeout, peer_timeout, self._ssl)

    async def __aenter__(self) -> CacheClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=256, limit_per_host=64, ttl_dns_cache=300, ssl=self._ssl
            ),
            timeout=self._timeout,
            auto_decompress=False,
        )
        if self._watcher is not None:
            await self._watcher.start()

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._watcher is not None:
            await self._watcher.close()
        self._wire.close()
        if self._session is not None:
            await self._session.close()
        self._origins.close()

    @property
    def ring(self) -> Ring:
        return self._watcher.ring if self._watcher else Ring()

    @property
    def watcher(self) -> RingWatcher | None:
        return self._watcher

    @property
    def block_size(self) -> int:
        return self._watcher.config.block_size if self._watcher else DEFAULT_BLOCK_SIZE

    async def stat(self, url: str) -> ObjectInfo:
        """Size and version of ``url`` (cached for ``stat_ttl`` seconds)."""
        info = self._stats.get(url)
        if info is None:
            info = await (await self._origins.get(url)).stat(url)
            self._stats[url] = info
        return info

    def forget(self, url: str) -> None:
        """Drop the cached stat of ``url`` (after a write, or a version mismatch)."""
        self._stats.pop(url, None)

    async def read(self, url: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``url`` (to the end if ``length`` is None).

        If the object changes during the read, the read restarts once on the new version
        so the bytes returned always come from one version.
        """
        for attempt in (1, 2):
            info = await self.stat(url)
            want = info.size - offset if length is None else length
            try:
                return await self.read_version(info, offset, max(0, want))
            except VersionMismatch:
                self.forget(url)
                if attempt == 2:
                    raise
                log.info("%s changed during a read, retrying on the new version", url)
        raise AssertionError("unreachable")

    async def read_version(self, info: ObjectInfo, offset: int, length: int) -> bytes:
        """Bytes of one pinned object version; raises :class:`VersionMismatch` if gone."""
        slices = slices_for_range(info.size, self.block_size, offset, length)
        if len(slices) == 1:
            s = slices[0]
            return bytes(memoryview(await self.read_block(info, s.index))[s.start : s.stop])

        async def part(index: int, start: int, stop: int) -> memoryview:
            async with self._parallel:
                data = await self.read_block(info, index)
            return memoryview(data)[start:stop]

        parts = await asyncio.gather(*(part(s.index, s.start, s.stop) for s in slices))
        return b"".join(parts)

    def block_ref(self, info: ObjectInfo, index: int) -> BlockRef:
        return BlockRef(
            info.url, info.origin, info.key, info.version, info.size, self.block_size, index
        )

    async def read_block(self, info: ObjectInfo, index: int, *, keep: bool = True) -> bytes:
        """One whole block: memory tier, then owners, then the origin.

        A block from a peer is the ``bytearray`` it was received into (see
        :mod:`clientlib.peerwire`), shared with the memory tier: read it, never change it.
        ``keep=False`` leaves a fetched block out of the memory tier: for a caller that
        streams through a file once and keeps what it read elsewhere (the mount's kernel
        page cache), so that the tier neither evicts hotter blocks for it nor holds one
        more copy, and the block's memory is freed, and reused, once the caller is done.
        """
        ref = self.block_ref(info, index)
        block_id = ref.id
        data = self._memory.get(block_id)
        if data is not None:
            CLIENT_BLOCK_READS.labels("local").inc()
            return data
        task = self._inflight.get(block_id)
        if task is None:
            task = asyncio.create_task(self._fetch(ref, block_id))
            self._inflight[block_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(block_id, None))
        data = await asyncio.shield(task)
        if keep and len(data) <= self._memory.maxsize:
            self._memory[block_id] = data
        return data

    async def read_part(self, info: ObjectInfo, index: int, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of block ``index``, fetching only those if need be.

        For small random reads (a Parquet footer, a seek into an index): the owner sends
        just the range, so a 64 KiB read costs 64 KiB on the wire and in this process,
        not the whole block. The part is not kept in the memory tier, which holds whole
        blocks only; a whole block already here or on its way is used instead.
        """
        ref = self.block_ref(info, index)
        block_id = ref.id
        data = self._memory.get(block_id)
        if data is not None:
            CLIENT_BLOCK_READS.labels("local").inc()
            return data[start:stop]
        if (task := self._inflight.get(block_id)) is not None:
            return (await asyncio.shield(task))[start:stop]
        part = await self._from_peers(ref, block_id, (start, stop))
        if part is None:
            part = await self._from_origin(ref, (start, stop))
        return part

    async def _fetch(self, ref: BlockRef, block_id: str) -> bytes:
        data = await self._from_peers(ref, block_id)
        if data is None:
            data = await self._from_origin(ref)
        return data

    def _owners(self, block_id: str) -> list[NodeInfo]:
        """Owners to try in order: the primary first, or a random replica if hot."""
        if block_id not in self._hot:
            return self.ring.owners(block_id, self._owners_to_try)
        replicas = self._watcher.config.replicas if self._watcher else 1
        owners = self.ring.owners(block_id, max(replicas, self._owners_to_try))
        pick = random.randrange(min(replicas, len(owners))) if owners else 0
        return [owners[pick], *owners[:pick], *owners[pick + 1 :]][: self._owners_to_try]

    async def _from_peers(
        self, ref: BlockRef, block_id: str, span: tuple[int, int] | None = None
    ) -> bytes | None:
        """The block from its owners, hedged: a hung owner does not hold the read up.

        An owner answers with headers at once, even on a miss it is still fetching from
        the origin. If the asked owner has not answered within ``hedge_delay`` seconds
        (hung, or overloaded), the next owner is asked too and the first good answer
        wins; a failed owner moves on to the next at once. ``None``: no owner served it.
        With ``span``, only those bytes of the block are asked for and returned.
        """
        owners = self._owners(block_id)
        if not owners:
            CLIENT_FALLBACKS.labels("no_nodes").inc()
            return None
        query = self._source_query(ref)
        pending: set[asyncio.Task[bytes | None]] = set()

        async def first_good(until_all_done: bool) -> bytes | None:
            nonlocal pending
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if (data := task.result()) is not None:
                        return data
                if not until_all_done:
                    break
            return None

        try:
            for node in owners:
                answered = asyncio.Event()
                task = asyncio.create_task(self._ask(node, ref, block_id, query, answered, span))
                pending.add(task)
                waiter = asyncio.create_task(answered.wait())
                await asyncio.wait({task, waiter}, timeout=self._hedge_delay)
                waiter.cancel()
                if task.done() and (data := task.result()) is not None:
                    return data
                if task.done():
                    pending.discard(task)
                    continue  # failed: the next owner at once
                if answered.is_set():
                    # The owner is on it (perhaps fetching from the origin): wait for it
                    # rather than making a second node fetch the same block.
                    if (data := await first_good(until_all_done=True)) is not None:
                        return data
                    continue
                CLIENT_FALLBACKS.labels("hedge").inc()
                log.info("node %s slow on block %s, asking the next owner", node.id, block_id)
            return await first_good(until_all_done=True)
        finally:
            for task in pending:
                task.cancel()

    async def _ask(
        self,
        node: NodeInfo,
        ref: BlockRef,
        block_id: str,
        query: str,
        answered: asyncio.Event,
        span: tuple[int, int] | None,
    ) -> bytes | None:
        """One owner's answer for one block (or its ``span``): the bytes, or ``None``
        (reason counted).

        ``answered`` is set as soon as the owner's response headers arrive.
        """
        path_qs = f"/v1/blocks/{block_id}?{query}"
        headers = self._auth.headers("GET", path_qs)
        if span is not None:
            headers["Range"] = f"bytes={span[0]}-{span[1] - 1}"
        try:
            reply = await self._wire.get(node.url, path_qs, headers, answered)
            body = _asked_for(reply, ref.length, span)
            if body is not None:
                CLIENT_BLOCK_READS.labels("peer").inc()
                if "x-ringcache-hot" in reply.headers:
                    self._hot[block_id] = True
                return body
            if reply.status in (200, 206):
                reason = "short_body"
            elif reply.status == 409:
                raise VersionMismatch(f"{ref.url} changed (node {node.id})")
            else:
                reason = f"status_{reply.status}"
                log.warning(
                    "node %s answered %d for block %s of %s: %s",
                    node.id,
                    reply.status,
                    block_id,
                    ref.url,
                    reply.body[:200].decode("utf-8", "replace"),
                )
        except TimeoutError:
            reason = "timeout"
            log.warning("node %s timed out on block %s of %s", node.id, block_id, ref.url)
        except OSError as exc:
            reason = "error"
            log.warning("node %s failed block %s of %s: %r", node.id, block_id, ref.url, exc)
        CLIENT_FALLBACKS.labels(reason).inc()
        return None

    def origin(self, url: str) -> Origin:
        """The origin backend for ``url`` (writers and listings go straight to it)."""
        return self._origins.for_url(url)

    async def fill(self, info: ObjectInfo, index: int, data: bytes) -> int:
        """Push one block of a just-written object version to its owners.

        Returns how many owners stored it. Best effort: a node that is down or full only
        means the next reader misses, so failures are logged, never raised.
        """
        ref = self.block_ref(info, index)
        if len(data) != ref.length:
            raise BadRequest(f"block {index} of {info.url} has {ref.length} bytes, not {len(data)}")
        block_id = ref.id
        if len(data) <= self._memory.maxsize:
            self._memory[block_id] = data
        assert self._session is not None, "CacheClient used before start()"
        stored = 0
        for node in self.ring.owners(block_id, 1):
            url = URL(f"{node.url}/v1/blocks/{block_id}?{self._source_query(ref)}", encoded=True)
            headers = self._auth.headers("PUT", url.raw_path_qs)
            try:
                async with self._session.put(url, data=data, headers=headers) as resp:
                    stored += resp.status == 201
                    if resp.status != 201:
                        log.warning(
                            "node %s did not store block %s of %s: %d",
                            node.id,
                            block_id,
                            info.url,
                            resp.status,
                        )
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("fill of block %s to node %s failed: %r", block_id, node.id, exc)
        return stored

    async def node_call(self, node: NodeInfo, path: str, doc: object) -> Any:
        """POST a msgpack document to one node's API and return its msgpack answer.

        Raises :class:`OriginError` (a 5xx-class failure) when the node is unreachable or
        refuses; callers decide whether another owner should be tried.
        """
        assert self._session is not None, "CacheClient used before start()"
        body = msgpack.packb(doc)
        headers = {
            "Content-Type": "application/msgpack",
            **self._auth.headers("POST", path, body_digest(body)),
        }
        try:
            async with self._session.post(
                f"{node.url}{path}",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=300, sock_connect=5),
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise OriginError(
                        f"node {node.id} answered {resp.status} to {path}: {body[:200]!r}"
                    )
                return msgpack.unpackb(body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise OriginError(f"node {node.id} unreachable: {exc!r}") from None

    @staticmethod
    def _source_query(ref: BlockRef) -> str:
        return urlencode(
            {
                "src": ref.url,
                "ver": ref.version,
                "size": ref.size,
                "bs": ref.block_size,
                "i": ref.index,
            }
        )

    async def _from_origin(self, ref: BlockRef, span: tuple[int, int] | None = None) -> bytes:
        start, stop = span or (0, ref.length)
        async with self._origin_slots:
            origin = await self._origins.get(ref.url)
            data = await origin.read(ref.url, ref.offset + start, stop - start, ref.version)
        if len(data) != stop - start:
            raise OriginError(f"origin returned {len(data)} of {stop - start} bytes for {ref.url}")
        CLIENT_BLOCK_READS.labels("origin").inc()
        return data

    def has_local(self, block_id: str) -> bool:
        """Whether the memory tier holds ``block_id`` (reading it costs no transfer)."""
        return block_id in self._memory

    @property
    def origins(self) -> Origins:
        """The client's pooled origin backends."""
        return self._origins

    def clear_local(self) -> None:
        """Empty the memory tier (benchmarks of the warm-peer path use this)."""
        self._memory.clear()
