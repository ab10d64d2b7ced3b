"""Entry point of ``cachectl``: global flags, sub-command dispatch, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from clientlib.cli import cat, config, drain, status, token, top, warmup
from clientlib.cluster import check_cluster_name
from clientlib.config import ETCD_SETTINGS, OneLineParser, add_etcd_arguments, layered_settings
from clientlib.errors import RingcacheError
from clientlib.etcd import EtcdTarget

DEFAULT_ETCD = "http://127.0.0.1:2379"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="cachectl", description="Operate a ringcache cluster.")
    # Each --etcd* flag also comes from its RINGCACHE_ETCD* variable (see main()).
    add_etcd_arguments(p, f"(default: $RINGCACHE_ETCD or {DEFAULT_ETCD})")
    p.add_argument(
        "--cluster",
        default=os.environ.get("RINGCACHE_CLUSTER", "default"),
        metavar="NAME",
        help="cluster name (default: $RINGCACHE_CLUSTER or 'default')",
    )
    p.add_argument(
        "--token-file",
        default=os.environ.get("RINGCACHE_TOKEN_FILE"),
        metavar="PATH",
        help="token (or, for operators, the cluster secret) to sign requests with",
    )
    p.add_argument(
        "--ca",
        default=os.environ.get("RINGCACHE_CA"),
        metavar="PEM",
        help="CA to verify nodes' TLS certificates with (nodes started with --tls-cert)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (status, warmup, top, drain, cat, config, token):
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args.etcd = EtcdTarget.from_settings(
            {"etcd": DEFAULT_ETCD, **layered_settings(args, ETCD_SETTINGS, None)}
        )
        check_cluster_name(args.cluster)
        code = asyncio.run(args.run(args))
    except RingcacheError as exc:
        print(f"cachectl: error: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        code = 0
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
