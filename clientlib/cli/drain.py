"""``cachectl drain NODE_ID``: take a node out of the ring; it exits when its work is done."""

from __future__ import annotations

import argparse
import asyncio
import time

from clientlib.client import CacheClient
from clientlib.errors import NotFound, RingcacheError
from clientlib.status import list_nodes


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("drain", help="drain a node: it leaves the ring, finishes, and exits")
    p.add_argument("node_id", metavar="NODE_ID", help="the node's id (see `cachectl status`)")
    p.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for it to leave (default 300)"
    )
    p.add_argument("--no-wait", action="store_true", help="return once the node is draining")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    _, nodes = await list_nodes(args.etcd, args.cluster)
    node = next((n for n in nodes if n.id == args.node_id), None)
    if node is None:
        known = ", ".join(n.id for n in nodes) or "none"
        raise NotFound(f"no node {args.node_id!r} in cluster {args.cluster} (nodes: {known})")
    async with CacheClient(None, token_file=args.token_file, ca_file=args.ca) as client:
        await client.node_call(node, "/v1/admin/drain", {})
    print(f"node {node.id} ({node.addr}) is draining")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        _, nodes = await list_nodes(args.etcd, args.cluster)
        if all(n.id != node.id for n in nodes):
            print(f"node {node.id} has left the cluster")
            return 0
        await asyncio.sleep(0.5)
    raise RingcacheError(f"node {node.id} still registered after {args.timeout:.0f}s")
