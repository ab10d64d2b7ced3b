"""``mountd SOURCE MOUNTPOINT``: mount a bucket or directory through the ringcache cluster.

A thin shell: read the configuration (:mod:`mountd.config`), become a daemon unless
``--foreground`` (:mod:`mountd.daemon`), set up logging (:mod:`mountd.logs`) and malloc
(:mod:`mountd.malloc`), and run the mount (:mod:`mountd.mount`) on uvloop.
"""

from __future__ import annotations

import logging
import sys

import uvloop

from clientlib.errors import RingcacheError
from mountd.config import load_config
from mountd.daemon import daemonize
from mountd.logs import setup_logging
from mountd.malloc import reuse_block_memory
from mountd.mount import run

__all__ = ["main"]

log = logging.getLogger("mountd")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user mistake is one line on stderr and exit status 2."""
    try:
        config = load_config(argv)
    except RingcacheError as exc:
        print(f"mountd: error: {exc}", file=sys.stderr)
        sys.exit(2)
    report_fd = None if config.foreground else daemonize()
    setup_logging(config)
    reuse_block_memory()
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
