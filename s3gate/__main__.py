"""``s3gate --listen HOST:PORT --etcd URL --keys FILE``: serve S3 in front of the cluster.

A thin shell: read the configuration (:mod:`s3gate.config`), start the clients and the
metrics endpoint, serve the application (:mod:`s3gate.app`) until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path

import uvloop
from aiohttp import web

from clientlib.errors import RingcacheError
from clientlib.metrics import serve_metrics
from s3gate.app import Gateway
from s3gate.config import GatewayConfig, load_config
from s3gate.registration import Registration

__all__ = ["main"]

log = logging.getLogger("s3gate")


async def serve(config: GatewayConfig) -> None:
    """Serve until SIGTERM or SIGINT; parts of unfinished uploads are removed."""
    with tempfile.TemporaryDirectory(prefix="s3gate-", dir=config.spool_dir) as spool:
        gateway = Gateway(config, Path(spool))
        runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
        registration = None
        try:
            await gateway.start()
            if config.metrics_listen is not None:
                serve_metrics(config.metrics_listen)
            await runner.setup()
            host, port = config.listen
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise RingcacheError(f"--listen {host}:{port}: {exc}") from None
            if config.metrics_advertise is not None:
                registration = Registration.of(
                    config.etcd, config.cluster, port, config.metrics_advertise
                )
                await registration.join()
            log.info(
                "serving S3 on http://%s:%d for cluster %s (%d keys%s)",
                host,
                port,
                config.cluster,
                len(config.keys),
                ", anonymous allowed" if config.allow_anonymous else "",
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            log.info("stopping")
        finally:
            if registration is not None:
                await registration.leave()
            await runner.cleanup()
            await gateway.close()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user mistake is one line on stderr and exit status 2."""
    try:
        config = load_config(argv)
    except RingcacheError as exc:
        print(f"s3gate: error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        uvloop.run(serve(config))
    except RingcacheError as exc:
        log.error("%s", exc)
        print(f"s3gate: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
