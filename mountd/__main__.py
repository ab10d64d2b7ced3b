"""``mountd SOURCE MOUNTPOINT``: mount a bucket or directory through the ringcache cluster.

A thin shell: parse the configuration, become a daemon (unless ``--foreground``), start
the client, mount, and serve FUSE requests on uvloop until SIGTERM, SIGINT, SIGHUP or
``fusermount3 -u``. As a daemon the parent process waits until the mount is up (or has
failed) so ``mountd ... && ls MOUNTPOINT`` works and a failure is the command's exit
status with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path

import pyfuse3
import pyfuse3.asyncio
import uvloop
from prometheus_client import start_http_server

from clientlib.client import CacheClient
from clientlib.errors import RingcacheError
from clientlib.origin import Origins
from mountd.config import MountConfig, load_config
from mountd.fs import RingcacheFS
from mountd.limits import Throttle
from mountd.localtier import LocalTier
from mountd.prefetch import BlockFetcher

log = logging.getLogger("mountd")


def _daemonize() -> int:
    """Fork; the parent exits with the child's start-up verdict. Returns the report fd."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        message = b"".join(chunks).decode(errors="replace")
        if message == "ok":
            sys.exit(0)
        print(f"mountd: error: {message or 'the daemon died at start'}", file=sys.stderr)
        sys.exit(1)
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return write_end


def _setup_logging(config: MountConfig) -> None:
    handler: logging.Handler
    if config.foreground and config.log_file is None:
        handler = logging.StreamHandler()
    elif config.log_file is not None:
        handler = logging.FileHandler(config.log_file)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler])
    # boto's DEBUG is every header of every request: only its warnings belong in our log.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


#: Kernel read-ahead of the mount. FUSE's default (128 KiB) means one request per
#: 128 KiB for a sequential reader; a larger window lets the kernel send up to 1 MiB
#: requests, several at once, which is most of the difference to a native file system.
READ_AHEAD_KB = 4096


async def _raise_read_ahead(mountpoint: str) -> None:
    """Best effort (needs root): set the read-ahead of the mount's backing device info.

    Only once the kernel has taken the INIT reply, which caps the read-ahead to the
    128 KiB libfuse answers with: a raise before that is undone (strace showed every
    FUSE read at 128 KiB). A stat of the mount point, answered by this process's FUSE
    loop, proves INIT is done. The bdi is found in /proc/self/mountinfo.
    """
    try:
        await asyncio.to_thread(os.stat, mountpoint)
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
        devices = [line.split()[2] for line in lines if line.split()[4] == mountpoint]
        if devices:
            Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")
    except (OSError, IndexError) as exc:
        log.info("kernel read-ahead of %s left at its default: %s", mountpoint, exc)


# mallopt(3) parameters from glibc's malloc.h. The mmap threshold is the largest that
# older glibc versions accept (half of a 64-bit heap's 64 MiB): blocks up to 32 MiB (the
# default is 4 MiB) then come from the heap; larger ones are still mapped one by one.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: Free memory glibc may keep at the top of the heap for the next blocks.
_TRIM_THRESHOLD = 128 * 1024 * 1024


def _reuse_block_memory() -> None:
    """Best effort: let glibc's malloc reuse freed block buffers rather than unmap them.

    A block buffer (4 MiB) is above glibc's default mmap threshold, so each block a
    reader fetches is a fresh mapping whose 1024 pages are faulted in and zeroed, and
    unmapped again when the block is freed: perf put that at half of mountd's CPU during
    a warm sequential read, which is CPU-bound in this one process. With the threshold
    above the block size and a trim threshold of a few dozen blocks, freed blocks stay in
    the heap and the next ones reuse their pages. Not glibc (musl, macOS): left as it is.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt: block buffers keep the C library's allocation policy")
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    ):
        log.info("mallopt refused the thresholds: block buffers are mapped one by one")


_reported: set[int] = set()


def _report(fd: int | None, message: str) -> None:
    """Tell the waiting parent how the start went: once only."""
    if fd is not None and fd not in _reported:
        _reported.add(fd)
        with contextlib.suppress(OSError):
            os.write(fd, message.encode())
            os.close(fd)


async def run(config: MountConfig, report_fd: int | None = None) -> None:
    """Mount, serve until told to stop, then upload what is pending and unmount.

    ``report_fd`` (a daemon's pipe to its parent) gets "ok" once mounted, or the reason
    the start failed.
    """
    try:
        await _serve(config, report_fd)
    except BaseException as exc:
        _report(report_fd, str(exc) or type(exc).__name__)
        raise


async def _serve(config: MountConfig, report_fd: int | None) -> None:
    pyfuse3.asyncio.enable()
    loop = asyncio.get_running_loop()
    client = CacheClient(
        config.etcd,
        config.cluster,
        memory_cache_bytes=config.memory_cache_bytes,
        # A node that is down refuses the connection at once (connect timeout); one that
        # is up may be fetching a cold block from the origin, which under load takes
        # seconds: giving up early would fetch the block twice from the origin.
        peer_read_timeout=config.peer_timeout,
        peer_timeout=2 * config.peer_timeout,
        origins=Origins(max_inflight=64),
        token_file=str(config.token_file) if config.token_file else None,
        ca_file=str(config.ca) if config.ca else None,
    )
    await client.start()
    tier = None
    if config.local_cache is not None:
        tier = LocalTier(config.local_cache, config.local_cache_bytes)
        await loop.run_in_executor(None, tier.open)
    download = Throttle(config.download_limit, "download") if config.download_limit else None
    upload = Throttle(config.upload_limit, "upload") if config.upload_limit else None
    fetcher = BlockFetcher(client, tier, download)
    fs = RingcacheFS(config, client, fetcher, upload)
    mounted = False
    raise_read_ahead: asyncio.Task[None] | None = None
    try:
        # Fail at start, with the reason, when the source is not there or not reachable.
        async with asyncio.timeout(config.op_timeout):
            await fs.origin.listdir(config.dir_url(""), max_keys=1)
        if config.metrics_listen is not None:
            host, port = config.metrics_listen
            try:
                start_http_server(port, addr=host)
            except OSError as exc:
                raise RingcacheError(f"--metrics-listen {host}:{port}: {exc}") from None
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
        try:
            pyfuse3.init(fs, str(config.mountpoint), options)
        except RuntimeError as exc:
            raise RingcacheError(f"cannot mount on {config.mountpoint}: {exc}") from None
        mounted = True
        raise_read_ahead = asyncio.create_task(_raise_read_ahead(str(config.mountpoint)))
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
        _report(report_fd, "ok")
        await pyfuse3.main(max_tasks=256)
        log.info("unmounting %s", config.mountpoint)
    finally:
        if raise_read_ahead is not None:
            raise_read_ahead.cancel()
        if mounted:
            await fs.flush_all()
            pyfuse3.close(unmount=True)
        await client.close()
        fetcher.close()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user mistake is one line on stderr and exit status 2."""
    try:
        config = load_config(argv)
    except RingcacheError as exc:
        print(f"mountd: error: {exc}", file=sys.stderr)
        sys.exit(2)
    report_fd = None if config.foreground else _daemonize()
    _setup_logging(config)
    _reuse_block_memory()
    try:
        uvloop.run(run(config, report_fd))
    except RingcacheError as exc:
        log.error("%s", exc)
        print(f"mountd: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
