"""``cachectl status``: membership and hit rates of the cluster."""

from __future__ import annotations

import argparse
import json

import humanfriendly

from clientlib.status import cluster_status
from clientlib.tls import client_context


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="nodes, usage and hit rates of the cluster")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    status = await cluster_status(args.etcd, args.cluster, client_context(args.ca))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(
        f"cluster {status['cluster']}: {len(status['nodes'])} nodes, block size "
        f"{humanfriendly.format_size(status['block_size'], binary=True)}, "
        f"hit rate {status['hit_rate']:.1%}"
    )
    header = f"{'NODE':<24} {'ADDR':<22} {'STATE':<12} {'USED':>10} {'CAPACITY':>10} {'HIT':>7}"
    print(header)
    for n in status["nodes"]:
        used = humanfriendly.format_size(n["used_bytes"], binary=True)
        cap = humanfriendly.format_size(n["capacity_bytes"], binary=True)
        print(
            f"{n['id']:<24} {n['addr']:<22} {n['state']:<12} {used:>10} {cap:>10} "
            f"{n['hit_rate']:>7.1%}"
        )
    return 0
