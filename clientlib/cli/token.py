"""``cachectl token create``: a scoped, expiring token derived from the cluster secret."""

from __future__ import annotations

import argparse

import humanfriendly

from clientlib.auth import METRICS, READ, WRITE, create_token, load_secret
from clientlib.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "token",
        help="make tokens for teams (run with --token-file pointing at the cluster secret)",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="print a new token to stdout")
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="URL_PREFIX",
        help="objects the token may read, e.g. s3://market-data/bars (repeatable; a scope "
        "covers whole path segments: s3://b/team never covers s3://b/team-other)",
    )
    create.add_argument("--tenant", default="default", help="team the token belongs to")
    create.add_argument(
        "--ttl", metavar="DURATION", help="lifetime, e.g. 12h or 30d (default: none)"
    )
    create.add_argument(
        "--write",
        action="store_true",
        help="may also fill the cache with blocks it wrote (a mount that writes needs it)",
    )
    create.add_argument(
        "--metrics",
        action="store_true",
        help="a token for Prometheus to scrape /metrics with (as a bearer token); "
        "it reads no data, and takes no --scope",
    )
    create.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    if not args.token_file:
        raise ConfigError("token create needs --token-file pointing at the cluster secret")
    ttl = None
    if args.ttl:
        try:
            ttl = humanfriendly.parse_timespan(args.ttl)
        except humanfriendly.InvalidTimespan:
            raise ConfigError(f"--ttl {args.ttl!r} is not a duration (try 12h or 30d)") from None
        if ttl <= 0:
            raise ConfigError("--ttl must be positive")
    if args.metrics:
        if args.scope or args.write:
            raise ConfigError("--metrics makes a scrape-only token: no --scope or --write")
        scopes, rights = [], frozenset({METRICS})
    else:
        if not args.scope:
            raise ConfigError("--scope URL_PREFIX is required (or --metrics)")
        scopes = args.scope
        rights = frozenset({READ, WRITE}) if args.write else frozenset({READ})
    print(create_token(load_secret(args.token_file), scopes, args.tenant, ttl, rights))
    return 0
