"""``ringcache-demo``: the whole read path on this machine, from nothing.

Starts a local etcd, three cache nodes and a ``file://`` origin holding generated minute
bars, then reads the data set twice through :class:`CacheClient` (cold, then warm from a
fresh client whose only cache is the cluster) and prints the cluster's hit rate as
``cachectl status`` computes it. ``--keep`` leaves the cluster running for exploring.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from clientlib.client import CacheClient
from clientlib.localcluster import start_etcd, start_node
from clientlib.status import cluster_status

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
    async with CacheClient(etcd_url, cluster) as client:
        started = time.perf_counter()
        total = 0
        for data in await asyncio.gather(*(client.read(f"file://{p}") for p in paths)):
            total += len(data)
        return total, time.perf_counter() - started


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
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ringcache-demo-"))
    procs = []
    try:
        print(f"workdir {workdir}")
        etcd = start_etcd(workdir / "etcd")
        procs.append(etcd)
        print(f"etcd        {etcd.url}")
        data = workdir / "origin"
        paths = write_minute_bars(data, args.days)
        size = sum(p.stat().st_size for p in paths)
        print(f"origin      file://{data}/minute_bars  ({len(paths)} files, {size / 1e6:.1f} MB)")
        for i in range(args.nodes):
            node = start_node(
                etcd.url,
                "demo",
                workdir / f"node{i}",
                size="1GiB",
                extra=["--file-root", str(data)],
            )
            procs.append(node)
            print(f"cachenode   {node.url}   metrics {node.url}/metrics")
        asyncio.run(wait_nodes(etcd.url, "demo", args.nodes))
        cold, cold_s = asyncio.run(read_all(etcd.url, "demo", paths))
        print(f"cold read   {cold / 1e6:.1f} MB in {cold_s:.2f}s (blocks fetched from the origin)")
        warm, warm_s = asyncio.run(read_all(etcd.url, "demo", paths))
        print(f"warm read   {warm / 1e6:.1f} MB in {warm_s:.2f}s (blocks served by the nodes)")
        status = asyncio.run(cluster_status(etcd.url, "demo"))
        print(
            f"hit rate    {status['hit_rate']:.1%}   (cachectl --etcd {etcd.url} "
            f"--cluster demo status)"
        )
        if args.keep:
            print("running; Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
