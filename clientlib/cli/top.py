"""``cachectl top``: a live view of the cluster, refreshed in place (rich's Live table)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import humanfriendly
from rich.console import Console
from rich.live import Live
from rich.table import Table

from clientlib.status import collect_details, list_nodes
from clientlib.tls import client_context


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("top", help="live per-node usage, hit ratios, request and origin rates")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument(
        "--iterations", type=int, default=0, help="stop after N refreshes (default: never)"
    )
    p.set_defaults(run=run)


def _ratio(a: int, b: int) -> str:
    return f"{a / (a + b):.1%}" if a + b else "-"


def render(cluster: str, rows: list[dict[str, Any]], prev: dict[str, Any], dt: float) -> Table:
    """One frame: per node, usage, hit ratios by count and bytes, req/s and origin MB/s."""
    table = Table(title=f"ringcache cluster {cluster}  ({time.strftime('%H:%M:%S')})")
    for name, justify in [
        ("node", "left"),
        ("state", "left"),
        ("used / capacity", "right"),
        ("blocks", "right"),
        ("hit % (count)", "right"),
        ("hit % (bytes)", "right"),
        ("req/s", "right"),
        ("served MB/s", "right"),
        ("origin MB/s", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        before = prev.get(row["id"], row)
        requests = row["hits"] + row["misses"] - before["hits"] - before["misses"]
        served = row.get("hit_bytes", 0) + row.get("miss_bytes", 0)
        served -= before.get("hit_bytes", 0) + before.get("miss_bytes", 0)
        origin = row.get("origin_bytes", 0) - before.get("origin_bytes", 0)
        used = humanfriendly.format_size(row["used_bytes"], binary=True)
        cap = humanfriendly.format_size(row["capacity_bytes"], binary=True)
        table.add_row(
            row["id"],
            row["state"],
            f"{used} / {cap}",
            str(row["blocks"]),
            _ratio(row["hits"], row["misses"]),
            _ratio(row.get("hit_bytes", 0), row.get("miss_bytes", 0)),
            f"{requests / dt:.1f}" if dt else "-",
            f"{served / dt / 1e6:.1f}" if dt else "-",
            f"{origin / dt / 1e6:.1f}" if dt else "-",
        )
    return table


async def run(args: argparse.Namespace) -> int:
    # Off a terminal (piped, logged) there is no width to fit: don't squeeze columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    context = client_context(args.ca)
    prev: dict[str, Any] = {}
    last = 0.0
    count = 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            _, nodes = await list_nodes(args.etcd, args.cluster)
            rows = await collect_details(nodes, context)
            now = time.monotonic()
            live.update(render(args.cluster, rows, prev, now - last if last else 0.0))
            live.refresh()
            prev, last = {r["id"]: r for r in rows}, now
            count += 1
            if args.iterations and count >= args.iterations:
                return 0
            await asyncio.sleep(args.interval)
