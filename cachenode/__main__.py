"""``cachenode``: start a cache node (a thin shell over the cachenode modules).

Start-up order matters: open the store (rebuild the index) before joining the ring, so
the first request routed here already sees the blocks on disk. Shutdown on SIGTERM/SIGINT
is the reverse: leave the ring (state ``draining``), keep serving until no block request
has come for ``drain_grace`` seconds (clients notice, peers take over the blocks by
handoff), stop accepting, let in-flight requests finish, then revoke the lease.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import uvloop
from aiohttp import web

from cachenode.config import NodeConfig, load_config
from cachenode.context import NodeContext
from cachenode.fasthits import KEEPALIVE_TIMEOUT, FastHitSite
from cachenode.handoff import Handoff
from cachenode.membership import Membership, stable_node_id
from cachenode.metrics import CACHE_CAPACITY, EVICTIONS
from cachenode.readthrough import ReadThrough
from cachenode.server import make_app
from cachenode.shield import OriginShield
from cachenode.store import BlockStore
from cachenode.verifier import Verifier
from clientlib.auth import Credentials, load_secret
from clientlib.cluster import NodeInfo
from clientlib.errors import RingcacheError
from clientlib.origin import Origins
from clientlib.ring import RingWatcher
from clientlib.tls import client_context, server_context

log = logging.getLogger("cachenode")


async def run(config: NodeConfig) -> None:
    """Run one node until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    node_id = stable_node_id(config.cache_dirs[0].path, config.node_id)
    store = BlockStore(
        config.cache_dirs,
        free_space_ratio=config.free_space_ratio,
        policy=config.eviction,
        on_evict=lambda _nbytes: EVICTIONS.inc(),
        memory_bytes=config.memory_cache,
        memory_recheck=config.memory_recheck,
    )
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, store.open)
    log.info(
        "node %s: store open with %d blocks, %d of %d bytes, in %.2fs",
        node_id,
        store.block_count,
        store.used_bytes,
        store.capacity_bytes,
        time.monotonic() - started,
    )
    CACHE_CAPACITY.set(store.capacity_bytes)
    origins = Origins(file_roots=config.file_roots, max_inflight=config.origin_max_inflight)
    weight = config.weight or max(store.capacity_bytes / 2**30, 0.001)
    info = NodeInfo(
        node_id,
        config.advertise,
        weight,
        store.capacity_bytes,
        "active",
        time.time(),
        "https" if config.tls_cert else "http",
    )
    membership = Membership(config.etcd, config.cluster, info, ttl=config.lease_ttl)
    watcher = RingWatcher(config.etcd, config.cluster, tls_only=config.tls_cert is not None)
    node = NodeContext(
        node_id,
        config.cluster,
        membership.list_nodes,
        config.serve_slots,
        # The config read at join until the ring watch has its own: a restarted node
        # must not refuse the cluster's block size in between.
        block_size=lambda: (
            (watcher.config if watcher.synced else membership.cluster_config).block_size
        ),
        cluster_gateways=membership.list_gateways,
    )
    secret = load_secret(config.token_file) if config.token_file else None
    credentials = Credentials.for_secret(secret) if secret else Credentials()
    peer_ssl = client_context(config.ca)
    handoff = Handoff(
        watcher, node_id, credentials, ssl_context=peer_ssl, window=config.handoff_window
    )
    node.peer_ssl = peer_ssl
    shield = OriginShield(node_id, config.origin_max_inflight, watcher)
    readthrough = ReadThrough(store, origins, shield, handoff)
    verifier = Verifier(secret, node_id) if secret else None
    app = make_app(store, readthrough, node, verifier)
    # aiohttp's own keep-alive default is an hour: a connection handed over by the fast
    # path (or any TLS one) must not sit idle between requests that long.
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=config.shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    host, port = config.listen
    site: web.BaseSite = (
        web.TCPSite(runner, host, port, backlog=1024, ssl_context=tls)
        if tls
        else FastHitSite(runner, store, node, verifier, host, port, backlog=1024)
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RingcacheError(
            f"cannot listen on {config.listen[0]}:{config.listen[1]}: {exc}"
        ) from None
    try:
        await membership.join()
    except RingcacheError:
        await runner.cleanup()
        raise
    await handoff.start()
    node.joined = True
    # S3 is what nodes front in production; its client takes most of a second of CPU to
    # build, which the first cold read after a start would otherwise wait for.
    preparing = asyncio.create_task(prepare_s3(origins), name="prepare-s3")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop.set)
    log.info("node %s serving on %s:%d", node_id, *config.listen)
    await node.stop.wait()

    log.info("node %s draining: leaving the ring", node_id)
    node.draining = True
    await membership.set_state("draining")
    await wait_idle(node, config.drain_grace, config.shutdown_timeout)
    await runner.cleanup()
    await handoff.close()
    await membership.leave()
    await preparing
    origins.close()
    store.close()
    log.info("node %s stopped", node_id)


async def prepare_s3(origins: Origins) -> None:
    """Build the S3 client ahead of the first miss; a failure only means that miss retries."""
    try:
        await origins.prepare_s3()
    except RingcacheError as exc:
        log.warning("S3 origin not ready: %s", exc)


async def wait_idle(node: NodeContext, idle: float, limit: float) -> None:
    """Wait until no block request has been seen for ``idle`` seconds (at most ``limit``).

    Draining nodes are still asked for their blocks by the nodes taking them over
    (handoff), so the node stays up while those requests keep coming.
    """
    deadline = time.monotonic() + limit
    await asyncio.sleep(idle)
    while time.monotonic() < deadline:
        quiet = time.monotonic() - node.last_request
        if node.inflight == 0 and quiet >= idle:
            return
        await asyncio.sleep(max(0.05, min(idle - quiet, 0.5)))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user mistake is one line on stderr and exit status 2."""
    try:
        config = load_config(argv)
    except RingcacheError as exc:
        print(f"cachenode: error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(run(config))
    except RingcacheError as exc:
        print(f"cachenode: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
