"""``ringcache-demo``: the main job on this machine, from nothing.

Starts a local etcd, three cache nodes and a ``file://`` origin holding generated minute
bars; warms the data set into the cluster (each block fetched from the origin once);
mounts it with mountd and runs a small "backtest" that reads every CSV through the mount
with plain file I/O; then prints the cluster's hit rate as ``cachectl status`` computes
it and where the dashboard is. Without FUSE (no /dev/fuse, not root) the job reads
through :class:`CacheClient` instead. ``--keep`` leaves everything running to explore.
However it ends (Ctrl-C, SIGTERM from ``timeout`` or a process manager, SIGHUP from a
closed terminal), it stops every process it started and unmounts what it mounted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from clientlib.client import CacheClient
from clientlib.launcher import Node, ProcessGroup, Stopped, start_etcd, start_mount, start_node
from clientlib.status import cluster_status
from clientlib.warmup import WarmupReport, warmup

TICKERS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM"]


def write_minute_bars(root: Path, days: int, seed: int = 7) -> list[Path]:
    """One CSV of 1-minute OHLCV bars per ticker (a random walk; 390 bars a day)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    start = datetime(2024, 1, 2, 9, 30)
    for ticker in TICKERS:
        price = rng.uniform(50, 500)
        lines = ["timestamp,open,high,low,close,volume"]
        for day in range(days):
            t = start + timedelta(days=day)
            for minute in range(390):
                o = price
                price = max(1.0, price * (1 + rng.gauss(0, 0.001)))
                hi, lo = max(o, price) * 1.0005, min(o, price) * 0.9995
                stamp = (t + timedelta(minutes=minute)).isoformat()
                lines.append(
                    f"{stamp},{o:.4f},{hi:.4f},{lo:.4f},{price:.4f},{rng.randint(100, 50000)}"
                )
        path = root / "minute_bars" / f"{ticker}.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


async def read_all(etcd_url: str, cluster: str, paths: list[Path]) -> tuple[int, float]:
    """The job without a mount: every file through the client library."""
    async with CacheClient(etcd_url, cluster) as client:
        started = time.perf_counter()
        total = 0
        for data in await asyncio.gather(*(client.read(f"file://{p}") for p in paths)):
            total += len(data)
        return total, time.perf_counter() - started


def backtest(files: list[Path]) -> tuple[int, float, dict[str, float]]:
    """The job through the mount: plain file reads, as research code does them.

    Returns bytes read, seconds, and each ticker's mean close (to show real parsing).
    """
    started = time.perf_counter()
    total = 0
    means: dict[str, float] = {}
    for path in files:
        with path.open(newline="") as fh:
            closes = [float(row["close"]) for row in csv.DictReader(fh)]
        total += path.stat().st_size
        means[path.stem] = sum(closes) / len(closes)
    return total, time.perf_counter() - started, means


async def warm(etcd_url: str, cluster: str, source: str) -> WarmupReport:
    async with CacheClient(etcd_url, cluster) as client:
        return await warmup(client, [source])


async def wait_nodes(etcd_url: str, cluster: str, count: int) -> None:
    for _ in range(200):
        status = await cluster_status(etcd_url, cluster)
        if sum(n["state"] == "active" for n in status["nodes"]) == count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("cache nodes did not register in etcd")


def demo_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ringcache-demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where to put everything (default: temp)")
    parser.add_argument("--nodes", type=int, default=3, help="cache nodes to start")
    parser.add_argument("--days", type=int, default=60, help="trading days of bars per ticker")
    parser.add_argument(
        "--keep", action="store_true", help="keep running until Ctrl-C, SIGTERM or SIGHUP"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ringcache-demo-"))
    try:
        with ProcessGroup():
            _demo(args, workdir)
    except Stopped as exc:
        sys.exit(128 + exc.signum)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _demo(args: argparse.Namespace, workdir: Path) -> None:
    """The demo's steps; the caller's :class:`ProcessGroup` stops what they start."""
    print(f"workdir {workdir}")
    etcd = start_etcd(workdir / "etcd")
    print(f"etcd        {etcd.url}")
    data = workdir / "origin"
    paths = write_minute_bars(data, args.days)
    size = sum(p.stat().st_size for p in paths)
    print(f"origin      file://{data}/minute_bars  ({len(paths)} files, {size / 1e6:.1f} MB)")
    nodes: list[Node] = []
    for i in range(args.nodes):
        node = start_node(
            etcd.url,
            "demo",
            workdir / f"node{i}",
            size="1GiB",
            extra=["--file-root", str(data)],
        )
        nodes.append(node)
        print(f"cachenode   {node.url}")
    asyncio.run(wait_nodes(etcd.url, "demo", args.nodes))
    source = f"file://{data}/minute_bars"
    report = asyncio.run(warm(etcd.url, "demo", source))
    print(
        f"warmup      {report.blocks_fetched} blocks fetched from the origin once for the "
        f"cluster in {report.seconds:.2f}s  (cachectl warmup {source})"
    )
    mount = None
    try:
        mount = start_mount(
            source, workdir / "mnt", etcd.url, "demo", "--read-only", "--allow-other"
        )
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"mount       unavailable here ({str(exc).splitlines()[0]}); reading via the API")
    if mount is not None:
        print(f"mountd      {source} on {mount.path}")
        files = sorted(mount.path.glob("*.csv"))
        total, seconds, means = backtest(files)
        print(
            f"backtest    read {len(files)} CSVs ({total / 1e6:.1f} MB) through the mount "
            f"in {seconds:.2f}s; mean close AAPL {means.get('AAPL', 0):.2f}"
        )
    else:
        total, seconds = asyncio.run(read_all(etcd.url, "demo", paths))
        print(f"job         {total / 1e6:.1f} MB in {seconds:.2f}s through the cluster")
    status = asyncio.run(cluster_status(etcd.url, "demo"))
    hits = sum(n["hits"] for n in status["nodes"])
    misses = sum(n["misses"] for n in status["nodes"])
    print(
        f"hit rate    {status['hit_rate']:.1%}: {misses} misses (the warmup's fetches), "
        f"{hits} hits (the job's reads)   (cachectl --etcd {etcd.url} --cluster demo status)"
    )
    print(f"dashboard   {nodes[0].url}/dashboard   metrics {nodes[0].url}/metrics")
    if args.keep:
        print("running; Ctrl-C (or SIGTERM, SIGHUP) stops everything")
        while True:
            time.sleep(3600)
