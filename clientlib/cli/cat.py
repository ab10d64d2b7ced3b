"""``cachectl cat URL``: an object's bytes through the cache, to stdout."""

from __future__ import annotations

import argparse
import sys

from clientlib.client import CacheClient
from clientlib.errors import BadRequest

CHUNK = 64 * 1024 * 1024


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cat", help="write an object's bytes (read through the cache) to stdout")
    p.add_argument("url", help="s3://bucket/key or file:///path")
    p.add_argument("--offset", type=int, default=0, help="first byte (default 0)")
    p.add_argument("--length", type=int, default=None, help="bytes to read (default: to EOF)")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    if args.offset < 0 or (args.length is not None and args.length < 0):
        raise BadRequest("--offset and --length must not be negative")
    out = sys.stdout.buffer
    async with CacheClient(
        args.etcd, args.cluster, token_file=args.token_file, ca_file=args.ca
    ) as client:
        info = await client.stat(args.url)
        end = info.size if args.length is None else min(info.size, args.offset + args.length)
        pos = args.offset
        while pos < end:
            n = min(CHUNK, end - pos)
            out.write(await client.read_version(info, pos, n))
            pos += n
    out.flush()
    return 0
