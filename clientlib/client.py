"""CacheClient: the read path every client shares (mountd, cachectl, users' jobs).

A read becomes block reads; each block is looked up in the local memory tier, then asked
of its owners on the ring in preference order, then read straight from the origin. A slow
or dead owner costs at most its timeout and is counted in
``ringcache_client_fallbacks_total{reason}``: a job never fails because a cache node did.
Concurrent reads of one block inside a client share one fetch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from types import TracebackType
from typing import Any

import aiohttp
import cachetools
import msgpack
from yarl import URL

from clientlib.auth import DIGEST_HEADER, WRITE, Credentials, body_digest
from clientlib.blockget import BlockGetClient, NodeReply
from clientlib.blocks import DEFAULT_BLOCK_SIZE, BlockRef, slices_for_range
from clientlib.cluster import NodeInfo
from clientlib.errors import BadRequest, ConfigError, OriginError, VersionMismatch
from clientlib.etcd import EtcdTarget
from clientlib.metrics import CLIENT_BLOCK_READS, CLIENT_FALLBACKS
from clientlib.origin import ObjectInfo, Origin, Origins
from clientlib.ring import Ring, RingWatcher
from clientlib.singleflight import SingleFlight
from clientlib.tls import client_context

__all__ = ["CacheClient"]

log = logging.getLogger(__name__)

# Children bound once: ``.labels()`` is a locked dict lookup, and these are per read.
_READ_LOCAL = CLIENT_BLOCK_READS.labels("local")
_READ_PEER = CLIENT_BLOCK_READS.labels("peer")
_READ_ORIGIN = CLIENT_BLOCK_READS.labels("origin")


@functools.lru_cache(maxsize=4096)
def _id_and_query(ref: BlockRef) -> tuple[str, str]:
    """A block's id and its query string for the nodes: a hash and a URL encoding of
    the same fields on every read of the block, remembered for the blocks read lately."""
    return ref.id, ref.query()


def _asked_for(
    reply: NodeReply, length: int, span: tuple[int, int] | None
) -> bytes | memoryview | None:
    """The bytes asked for from a node's answer, or ``None`` if it does not hold them.

    A node may answer a ranged request with the whole block (a lookup it joins to a
    fetch in flight does), so a whole block is sliced here.
    """
    if reply.status == 200 and len(reply.body) == length:
        return reply.body if span is None else bytes(reply.body[span[0] : span[1]])
    if span is not None and reply.status == 206:
        start, stop = span
        expected = f"bytes {start}-{stop - 1}/{length}"
        if reply.headers.get("content-range") == expected and len(reply.body) == stop - start:
            return reply.body
    return None


class CacheClient:
    """Reads objects through the cache cluster ``cluster`` registered in ``etcd``.

    ``etcd`` is a URL or, for a secured etcd, an :class:`~clientlib.etcd.EtcdTarget`
    (CA, client certificate, user). ``etcd=None`` gives a client with no cluster (every
    block from the origin), which is what a job falls back to when it has no cache at
    all. Use as an async context manager.
    """

    def __init__(
        self,
        etcd: EtcdTarget | str | None = None,
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
        credentials: Credentials | None = None,
    ) -> None:
        # With the cluster's CA given, only TLS nodes are trusted (see RingWatcher).
        self._watcher = RingWatcher(etcd, cluster, tls_only=ca_file is not None) if etcd else None
        self._origins = origins or Origins()
        self._owners_to_try = owners_to_try
        # ``credentials``: a token already read (the S3 gateway's keys), for ``token_file``.
        self._auth = credentials or Credentials.from_file(token_file)
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
        self._inflight: SingleFlight[str, bytes] = SingleFlight("block fetch")
        # Blocks a node flagged as hot: for a while, reads of them pick one of the
        # block's first `replicas` owners at random instead of always the first.
        self._hot: cachetools.TTLCache[str, bool] = cachetools.TTLCache(maxsize=4096, ttl=10)
        self._parallel = asyncio.Semaphore(parallelism)
        self._session: aiohttp.ClientSession | None = None
        # Block GETs, the bulk of the bytes, bypass aiohttp (see clientlib.blockget).
        self._wire = BlockGetClient(connect_timeout, peer_read_timeout, peer_timeout, self._ssl)

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
            try:
                await self._watcher.start()
            except ConfigError:
                await self.close()
                raise

    async def close(self) -> None:
        self._inflight.cancel_all()
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
        """Bytes of one pinned object version; raises :class:`VersionMismatch` if gone.

        The block size is read once: a read cut into blocks of one size must fetch blocks
        of that size, even if the cluster setting changes while it waits.
        """
        bs = self.block_size
        slices = slices_for_range(info.size, bs, offset, length)
        if len(slices) == 1:
            s = slices[0]
            block = await self.read_block(info, s.index, block_size=bs)
            return bytes(memoryview(block)[s.start : s.stop])

        async def part(index: int, start: int, stop: int) -> memoryview:
            async with self._parallel:
                data = await self.read_block(info, index, block_size=bs)
            return memoryview(data)[start:stop]

        parts = await asyncio.gather(*(part(s.index, s.start, s.stop) for s in slices))
        return b"".join(parts)

    def block_ref(self, info: ObjectInfo, index: int, block_size: int | None = None) -> BlockRef:
        """Block ``index`` of ``info``, in blocks of ``block_size`` (the cluster's now if
        None). Callers that cut a file into blocks pass the size they cut with: the
        cluster setting may change between the cut and the fetch, and a block index means
        nothing without its size."""
        return BlockRef(
            info.url,
            info.origin,
            info.key,
            info.version,
            info.size,
            block_size or self.block_size,
            index,
        )

    def block_id(self, info: ObjectInfo, index: int, block_size: int | None = None) -> str:
        """The id of :meth:`block_ref` (remembered for the blocks read lately)."""
        return _id_and_query(self.block_ref(info, index, block_size))[0]

    async def read_block(
        self, info: ObjectInfo, index: int, *, keep: bool = True, block_size: int | None = None
    ) -> bytes:
        """One whole block: memory tier, then owners, then the origin.

        A block from a peer is a view of the buffer it was received into (see
        :mod:`clientlib.blockget`), shared with the memory tier: read it, never change it.
        ``keep=False`` leaves a fetched block out of the memory tier: for a caller that
        streams through a file once and keeps what it read elsewhere (the mount's kernel
        page cache), so that the tier neither evicts hotter blocks for it nor holds one
        more copy, and the block's memory is freed, and reused, once the caller is done.
        """
        ref = self.block_ref(info, index, block_size)
        block_id, query = _id_and_query(ref)
        data = self._memory.get(block_id)
        if data is not None:
            _READ_LOCAL.inc()
            return data
        data = await self._inflight.run(block_id, lambda: self._race(ref, block_id, query))
        if keep:
            self.remember(block_id, data)
        return data

    def remember(self, block_id: str, data: bytes) -> None:
        """Put a whole, checked block in the memory tier (one larger than the tier is
        left out): for a caller that got it from a tier of its own (a local disk)."""
        if len(data) <= self._memory.maxsize:
            self._memory[block_id] = data

    async def read_part(
        self, info: ObjectInfo, index: int, start: int, stop: int, block_size: int | None = None
    ) -> bytes:
        """Bytes ``[start, stop)`` of block ``index``, fetching only those if need be.

        For small random reads (a Parquet footer, a seek into an index): the owner sends
        just the range, so a 64 KiB read costs 64 KiB on the wire and in this process,
        not the whole block. The part is not kept in the memory tier, which holds whole
        blocks only; a whole block already here or on its way is used instead.
        """
        ref = self.block_ref(info, index, block_size)
        block_id, query = _id_and_query(ref)
        data = self._memory.get(block_id)
        if data is not None:
            _READ_LOCAL.inc()
            return data[start:stop]
        if (task := self._inflight.get(block_id)) is not None:
            return (await asyncio.shield(task))[start:stop]
        return await self._race(ref, block_id, query, (start, stop))

    def _owners(self, block_id: str) -> list[NodeInfo]:
        """Owners to try in order (:meth:`Ring.read_order`): the primary first, or a
        random replica of a block a node flagged as hot."""
        replicas = self._watcher.config.replicas if self._watcher else 1
        return self.ring.read_order(
            block_id, self._owners_to_try, replicas=replicas, hot=block_id in self._hot
        )

    async def _race(
        self, ref: BlockRef, block_id: str, query: str, span: tuple[int, int] | None = None
    ) -> bytes:
        """The block (or its ``span``) from its owners, hedged, then from the origin too.

        The first owner is asked at once; each next one when the one before has had
        ``hedge_delay`` seconds without answering (hung, or overloaded), or at once when
        it failed. An owner that answers with headers (a miss it is fetching from the
        origin for us) holds the next *owner* back, so two nodes do not fetch one block.
        Once every owner has had its hedge delay, the origin is asked too, whatever the
        owners are doing, and the first good answer wins: no mix of dead, hung and slow
        nodes holds a read up for more than ``hedge_delay`` per owner plus one origin read.

        Most reads end with the first owner's answer well within ``hedge_delay``: that
        wait is one future and one timer (:meth:`_first_answer`), and the race below is
        set up only when the first owner is late or failed.
        """
        owners = self._owners(block_id)
        if not owners:
            CLIENT_FALLBACKS.labels("no_nodes").inc()
            return await self._from_origin(ref, span)
        asked_at = asyncio.get_running_loop().time()
        answered = asyncio.Event()
        first = asyncio.create_task(self._ask(owners[0], ref, block_id, query, answered, span))
        try:
            late = not await self._first_answer(first)
        except BaseException:
            first.cancel()
            raise
        if not late and (data := first.result()) is not None:
            return data
        # Late, or failed (then the next owner at once).
        out = first if late else None
        return await self._hedged(ref, block_id, span, query, owners, asked_at, out, answered)

    async def _first_answer(self, task: asyncio.Task[bytes | None]) -> bool:
        """Wait up to ``hedge_delay`` for the first owner's task; whether it is done.

        ``asyncio.wait`` would do, at the cost of a set, a waiter and callbacks per read.
        """
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        task.add_done_callback(wake)
        timer = loop.call_later(self._hedge_delay, wake)
        try:
            await woken
        finally:
            timer.cancel()
            task.remove_done_callback(wake)
        return task.done()

    async def _hedged(
        self,
        ref: BlockRef,
        block_id: str,
        span: tuple[int, int] | None,
        query: str,
        owners: list[NodeInfo],
        asked_at: float,
        first: asyncio.Task[bytes | None] | None,
        answered: asyncio.Event,
    ) -> bytes:
        """The race of :meth:`_race` once its first owner, asked at ``asked_at``, has had
        ``hedge_delay`` and is still out (``first``), or failed (``first`` None)."""
        loop = asyncio.get_running_loop()
        origin_at = asked_at + self._hedge_delay * len(owners)
        waiting = list(owners[1:])
        next_ask = loop.time() if first is None else asked_at + self._hedge_delay
        peers: dict[asyncio.Task[bytes | None], asyncio.Event] = {}
        if first is not None:
            peers[first] = answered
        origin: asyncio.Task[bytes] | None = None
        origin_error: BaseException | None = None
        try:
            while True:
                now = loop.time()
                held = any(e.is_set() for e in peers.values())
                if waiting and not held and (now >= next_ask or not peers):
                    node = waiting.pop(0)
                    if peers:
                        CLIENT_FALLBACKS.labels("hedge").inc()
                        log.info("owners slow on block %s, asking node %s too", block_id, node.id)
                    event = asyncio.Event()
                    task = asyncio.create_task(self._ask(node, ref, block_id, query, event, span))
                    peers[task] = event
                    next_ask = now + self._hedge_delay
                if origin is None and (now >= origin_at or not (waiting or peers)):
                    if peers:
                        CLIENT_FALLBACKS.labels("hedge_origin").inc()
                        log.info(
                            "owners of block %s of %s slow: asking the origin", block_id, ref.url
                        )
                    origin = asyncio.create_task(self._from_origin(ref, span))
                if origin_error is not None and not (waiting or peers):
                    raise origin_error
                racing: set[asyncio.Future[Any]] = set(peers)
                if origin is not None and origin_error is None:
                    racing.add(origin)
                # Wake on: an answer, an owner's headers, the next hedge, the origin's turn.
                answers = {
                    asyncio.ensure_future(e.wait()) for e in peers.values() if not e.is_set()
                }
                wake = [] if origin is not None else [origin_at]
                if waiting and not held:
                    wake.append(next_ask)
                timeout = max(0.0, min(wake) - loop.time()) if wake else None
                try:
                    done, _ = await asyncio.wait(
                        racing | answers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in answers:
                        waiter.cancel()
                for task in done & peers.keys():
                    del peers[task]
                    if (data := task.result()) is not None:
                        return data
                    next_ask = loop.time()  # it failed: the next owner at once
                if origin is not None and origin in done:
                    if origin.exception() is None or not (waiting or peers):
                        return origin.result()
                    origin_error = origin.exception()
                    log.info("origin failed on block %s; its owners may still answer", block_id)
        finally:
            for task in peers:
                task.cancel()
            if origin is not None and not origin.done():
                origin.cancel()

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
        headers = self._auth.headers("GET", path_qs, node=node.id)
        if span is not None:
            headers["Range"] = f"bytes={span[0]}-{span[1] - 1}"
        try:
            reply = await self._wire.get(node.url, path_qs, headers, answered)
            body = _asked_for(reply, ref.length, span)
            if body is not None:
                _READ_PEER.inc()
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
                    bytes(reply.body[:200]).decode("utf-8", "replace"),
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

    async def fill(
        self, info: ObjectInfo, index: int, data: bytes, block_size: int | None = None
    ) -> int:
        """Push one block of a just-written object version to its owners.

        Returns how many owners stored it. Best effort: a node that is down or full only
        means the next reader misses, so failures are logged, never raised. A token
        without the ``write`` right on ``info.url`` fills nothing (nodes would refuse).
        """
        ref = self.block_ref(info, index, block_size)
        if len(data) != ref.length:
            raise BadRequest(f"block {index} of {info.url} has {ref.length} bytes, not {len(data)}")
        block_id = ref.id
        if len(data) <= self._memory.maxsize:
            self._memory[block_id] = data
        assert self._session is not None, "CacheClient used before start()"
        if not self._auth.may(WRITE, info.url):
            log.debug("token has no write right on %s: block %s not filled", info.url, block_id)
            return 0
        digest = await asyncio.to_thread(body_digest, data) if self._auth.signing else ""
        stored = 0
        for node in self.ring.owners(block_id, 1):
            url = URL(f"{node.url}/v1/blocks/{block_id}?{ref.query()}", encoded=True)
            headers = self._auth.headers("PUT", url.raw_path_qs, digest, node=node.id)
            if digest:
                headers[DIGEST_HEADER] = digest
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
            **self._auth.headers("POST", path, body_digest(body), node=node.id),
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

    async def _from_origin(self, ref: BlockRef, span: tuple[int, int] | None = None) -> bytes:
        start, stop = span or (0, ref.length)
        async with self._origin_slots:
            origin = await self._origins.get(ref.url)
            data = await origin.read(ref.url, ref.offset + start, stop - start, ref.version)
        if len(data) != stop - start:
            raise OriginError(f"origin returned {len(data)} of {stop - start} bytes for {ref.url}")
        _READ_ORIGIN.inc()
        return data

    @property
    def memory_bytes(self) -> int:
        """The capacity of the memory tier."""
        return int(self._memory.maxsize)

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
