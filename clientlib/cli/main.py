"""Entry point of ``cachectl``: global settings, sub-command dispatch, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from clientlib.cli import cat, config, drain, status, token, top, warmup
from clientlib.config import (
    TEXT,
    OneLineParser,
    Setting,
    SettingsTable,
    cluster_setting,
    etcd_settings,
)
from clientlib.errors import RingcacheError
from clientlib.etcd import EtcdTarget

__all__ = ["SETTINGS", "build_parser", "main"]

#: The global settings of every cachectl command: flags and RINGCACHE_* variables.
SETTINGS = SettingsTable(
    "cachectl",
    "Operate a ringcache cluster.",
    [
        *etcd_settings(default="http://127.0.0.1:2379"),
        cluster_setting(),
        Setting(
            "token_file",
            TEXT,
            "token (or, for operators, the cluster secret) to sign requests with",
            metavar="PATH",
        ),
        Setting(
            "ca",
            TEXT,
            "CA to verify nodes' TLS certificates with (nodes started with --tls-cert)",
            shown_default="system store",
            metavar="PEM",
        ),
    ],
    config_file=False,
)


def build_parser() -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = OneLineParser(
        prog=SETTINGS.prog, description=SETTINGS.description, epilog=SETTINGS.epilog()
    )
    SETTINGS.add_arguments(p)
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
        values = SETTINGS.resolve(args)
        args.etcd = EtcdTarget.from_settings(values)
        for name in ("cluster", "token_file", "ca"):
            setattr(args, name, values[name])
        code = asyncio.run(args.run(args))
    except RingcacheError as exc:
        print(f"cachectl: error: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        code = 0
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
