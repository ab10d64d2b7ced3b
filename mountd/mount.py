"""One mount's life: start the client, mount, serve FUSE requests, upload, unmount.

:func:`run` serves until SIGTERM, SIGINT, SIGHUP or ``fusermount3 -u``, then uploads what
is pending and unmounts. It fails at start, with the reason, when the source is missing
or unreachable or the mount point cannot be mounted on.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import pyfuse3
import pyfuse3.asyncio

from clientlib.client import CacheClient
from clientlib.errors import RingcacheError
from clientlib.metrics import serve_metrics
from clientlib.origin import Origins
from mountd import fusewait
from mountd.cachedir import RESERVE, claim, identity
from mountd.config import AUTO, MountConfig
from mountd.daemon import report
from mountd.fs import RingcacheFS
from mountd.localtier import LocalTier
from mountd.prefetch import BlockFetcher
from mountd.readahead import raise_read_ahead
from mountd.throttle import Throttle

__all__ = ["run"]

log = logging.getLogger(__name__)


async def run(config: MountConfig, report_fd: int | None = None) -> None:
    """Mount, serve until told to stop, then upload what is pending and unmount.

    ``report_fd`` (a daemon's pipe to its parent, see :mod:`mountd.daemon`) gets "ok"
    once mounted, or the reason the start failed.
    """
    try:
        await _serve(config, report_fd)
    except BaseException as exc:
        report(report_fd, str(exc) or type(exc).__name__)
        raise


def _client(config: MountConfig) -> CacheClient:
    return CacheClient(
        config.etcd,
        config.cluster,
        memory_cache_bytes=config.memory_cache_bytes,
        # A node that is down refuses the connection at once (connect timeout); one that
        # is up may be fetching a cold block from the origin, which under load takes
        # seconds: giving up early would fetch the block twice from the origin.
        peer_read_timeout=config.peer_timeout,
        peer_timeout=2 * config.peer_timeout,
        hedge_delay=config.hedge_delay,
        origins=Origins(max_inflight=64),
        token_file=str(config.token_file) if config.token_file else None,
        ca_file=str(config.ca) if config.ca else None,
    )


def _fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    # default_permissions: the kernel enforces modes and owners (pyfuse3's default).
    # nosuid, nodev (libfuse's default, said here so it stays): a mode stored in the
    # bucket by whoever may write it must not make a setuid program on this machine.
    options |= {"fsname=ringcache", "subtype=ringcache", "noatime", "default_permissions"}
    options |= {"nosuid", "nodev"}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


async def _serve(config: MountConfig, report_fd: int | None) -> None:
    pyfuse3.asyncio.enable()
    fusewait.install()
    loop = asyncio.get_running_loop()
    client = _client(config)
    await client.start()
    claimed = None
    tier = None
    if config.local_cache == AUTO:
        ident = identity(config.etcd.url, config.cluster, config.source, config.token_file)
        claimed = await loop.run_in_executor(None, claim, config.local_cache_root, ident)
        if claimed is not None:
            tier = LocalTier(claimed.path, claimed.capacity, reserve=RESERVE)
    elif config.local_cache is not None:
        tier = LocalTier(config.local_cache, config.local_cache_bytes)
    if tier is not None:
        await loop.run_in_executor(None, tier.open)
    download = Throttle(config.download_limit, "download") if config.download_limit else None
    upload = Throttle(config.upload_limit, "upload") if config.upload_limit else None
    fetcher = BlockFetcher(client, tier, download)
    fs = RingcacheFS(config, client, fetcher, upload)
    mounted = False
    read_ahead: asyncio.Task[None] | None = None
    try:
        # Fail at start, with the reason, when the source is not there or not reachable.
        async with asyncio.timeout(config.op_timeout):
            await fs.origin.listdir(config.dir_url(""), max_keys=1)
        if config.metrics_listen is not None:
            serve_metrics(config.metrics_listen)
        try:
            pyfuse3.init(fs, str(config.mountpoint), _fuse_options(config))
        except RuntimeError as exc:
            raise RingcacheError(f"cannot mount on {config.mountpoint}: {exc}") from None
        mounted = True
        read_ahead = asyncio.create_task(raise_read_ahead(str(config.mountpoint)))
        # SIGHUP too: a foreground mountd whose terminal closes must not leave a dead
        # mount behind (there is no configuration to reload).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        log.info(
            "mounted %s on %s (cluster %s, block size %d)",
            config.source,
            config.mountpoint,
            config.cluster,
            client.block_size,
        )
        report(report_fd, "ok")
        await pyfuse3.main(max_tasks=256)
        log.info("unmounting %s", config.mountpoint)
    finally:
        if read_ahead is not None:
            read_ahead.cancel()
        if mounted:
            await fs.flush_all()
            fusewait.release()
            pyfuse3.close(unmount=True)
        await client.close()
        fetcher.close()
        if claimed is not None:
            claimed.release()
