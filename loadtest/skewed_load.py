#!/usr/bin/env python3
"""Skewed load on a real 3-node cluster: S3-FIFO against LRU, hit ratio and latency.

What it runs, all on 127.0.0.1: one etcd, and per eviction policy a fresh cluster of 3
``cachenode`` processes (``--eviction s3fifo`` or ``--eviction lru``) whose cache dirs add
up to ``--capacity-fraction`` (20%) of the data set, reading through to a ``file://``
origin: a temp dir of ``--objects`` one-block objects of ``--object-kib`` KiB each
(400 x 256 KiB = 100 MiB by default; blocks stay 4 MiB, these are short last blocks).

``--concurrency`` asyncio tasks (32) share ``--clients`` ``CacheClient`` instances (4)
with ``memory_cache_bytes=0``, so every read goes to the cluster, and read whole objects
drawn from Zipf(``--alpha`` 0.9) popularity (object ranks shuffled; the very same request
sequence for both policies, from ``eviction_sim.zipf_requests``). The first
``--warmup-fraction`` of the requests fills the caches and is not counted.

Per policy it reports the nodes' hit ratio (``/v1/stats`` hits and misses, summed over the
nodes, measured phase only), origin requests (the nodes' read-throughs, plus any client
fallback to the origin), and p50/p99 read latency as the client sees it. As a reference,
the same trace is replayed against one cache of the whole cluster's size with the policy
classes (what ``eviction_sim.py`` does): the cluster differs by splitting the capacity
over 3 nodes by the ring, and by hot blocks that clients spread over several owners.

    .venv/bin/python -m loadtest.skewed_load            # ~1-2 minutes
    .venv/bin/python -m loadtest.skewed_load --requests 3000 --policies s3fifo

Results: ``loadtest/results/skewed_load.json``, ``skewed_load.md`` and ``skewed_load.png``.
Every process it starts is stopped on exit, error or Ctrl-C, and the temp dir is removed
(``--keep`` leaves it, with the nodes' logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from cachenode.eviction import make_policy
from clientlib import CacheClient
from clientlib.launcher import Etcd, Node, start_etcd, start_node
from loadtest import harness
from loadtest.eviction_sim import replay, zipf_requests

NODES = 3


async def cluster_stats(nodes: list[Node]) -> list[dict[str, Any]]:
    return await asyncio.gather(*(asyncio.to_thread(harness.node_stats, n) for n in nodes))


def delta(after: list[dict[str, Any]], before: list[dict[str, Any]], key: str) -> int:
    return sum(int(a[key]) - int(b[key]) for a, b in zip(after, before, strict=True))


def client_origin_reads() -> float:
    """Blocks this process's clients read straight from the origin (no node answered)."""
    return (
        REGISTRY.get_sample_value("ringcache_client_block_reads_total", {"source": "origin"}) or 0.0
    )


async def drive(
    clients: list[CacheClient], urls: list[str], trace: list[int], concurrency: int
) -> tuple[list[float], int]:
    """Read ``urls[i]`` for every ``i`` of ``trace`` with ``concurrency`` tasks."""
    latencies: list[float] = []
    errors = 0
    position = 0

    async def worker(client: CacheClient) -> None:
        nonlocal position, errors
        while position < len(trace):
            url = urls[trace[position]]
            position += 1
            started = time.perf_counter()
            try:
                await client.read(url)
            except Exception as exc:  # a failed read is a result, not a crash
                errors += 1
                print(f"read of {url} failed: {exc!r}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    return latencies, errors


async def run_policy(
    policy: str,
    etcd: Etcd,
    root: Path,
    data: Path,
    urls: list[str],
    trace: list[int],
    args: argparse.Namespace,
    per_node_bytes: int,
    nodes: list[Node],
) -> dict[str, Any]:
    cluster = f"skew-{policy}"
    for i in range(NODES):
        nodes.append(
            start_node(
                etcd.url,
                cluster,
                root / policy / f"node{i}",
                size=str(per_node_bytes),
                extra=["--eviction", policy, "--file-root", str(data), "--log-level", "WARNING"],
            )
        )
    clients = [CacheClient(etcd.url, cluster, memory_cache_bytes=0) for _ in range(args.clients)]
    try:
        for client in clients:
            await client.start()
        await harness.wait_for_ring(
            clients, NODES, f"clients did not see {NODES} nodes in the ring", 20
        )
        warmup = int(len(trace) * args.warmup_fraction)
        start_stats = await cluster_stats(nodes)
        origin0 = client_origin_reads()
        started = time.perf_counter()
        _, warm_errors = await drive(clients, urls, trace[:warmup], args.concurrency)
        warm_seconds = time.perf_counter() - started
        mid_stats = await cluster_stats(nodes)
        cpu_mid = harness.cpu_seconds(*(n.pid for n in nodes))
        origin_mid = client_origin_reads()
        started = time.perf_counter()
        latencies, errors = await drive(clients, urls, trace[warmup:], args.concurrency)
        seconds = time.perf_counter() - started
        end_stats = await cluster_stats(nodes)
        node_cpu = harness.cpu_seconds(*(n.pid for n in nodes)) - cpu_mid
        origin_end = client_origin_reads()
    finally:
        for client in clients:
            await client.close()
    hits, misses = delta(end_stats, mid_stats, "hits"), delta(end_stats, mid_stats, "misses")
    all_hits, all_misses = (
        delta(end_stats, start_stats, "hits"),
        delta(end_stats, start_stats, "misses"),
    )
    return {
        "policy": policy,
        "cluster": cluster,
        "measured_requests": len(trace) - warmup,
        "warmup_requests": warmup,
        "warmup_seconds": round(warm_seconds, 2),
        "seconds": round(seconds, 2),
        "reads_per_second": round(len(latencies) / seconds, 1),
        "errors": errors + warm_errors,
        "node_hits": hits,
        "node_misses": misses,
        "hit_ratio": hits / max(1, hits + misses),
        "hit_ratio_including_warmup": all_hits / max(1, all_hits + all_misses),
        "origin_requests": delta(end_stats, mid_stats, "origin_requests"),
        "origin_requests_including_warmup": delta(end_stats, start_stats, "origin_requests"),
        "origin_bytes": delta(end_stats, mid_stats, "origin_bytes"),
        "client_origin_fallbacks": int(origin_end - origin_mid),
        "client_origin_fallbacks_including_warmup": int(origin_end - origin0),
        "node_cpu_seconds": round(node_cpu, 2),
        "node_cpu_ms_per_read": round(node_cpu / max(1, len(latencies)) * 1e3, 3),
        "evictions": delta(end_stats, start_stats, "evictions"),
        "latency_ms": {
            "p50": harness.percentile(latencies, 0.50) * 1e3,
            "p90": harness.percentile(latencies, 0.90) * 1e3,
            "p99": harness.percentile(latencies, 0.99) * 1e3,
            "mean": statistics.fmean(latencies) * 1e3,
        },
        "nodes": [
            {
                "id": s["id"],
                "blocks": s["blocks"],
                "used_bytes": s["used_bytes"],
                "capacity_bytes": s["capacity_bytes"],
                "hits": s["hits"],
                "misses": s["misses"],
            }
            for s in end_stats
        ],
    }


async def run(args: argparse.Namespace, root: Path, procs: list[Any]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    object_bytes = args.object_kib * 1024
    data, urls = harness.write_objects(root, args.objects, object_bytes, rng, digits=4)
    os.sync()  # no writeback of the data set during the first policy's run
    dataset_bytes = object_bytes * args.objects
    per_node_bytes = int(dataset_bytes * args.capacity_fraction / NODES)
    ranks = list(range(args.objects))
    rng.shuffle(ranks)  # popularity unrelated to names, so to ring positions
    trace = list(zipf_requests(ranks, args.alpha, args.requests, random.Random(args.seed + 1)))

    etcd = start_etcd(root / "etcd")
    procs.append(etcd)
    runs = []
    for policy in args.policies:
        nodes: list[Node] = []
        procs.extend([nodes])
        row = await run_policy(policy, etcd, root, data, urls, trace, args, per_node_bytes, nodes)
        # Reference: the same trace on one cache of the cluster's total capacity.
        # (replay leaves out the first 10% as warm-up, as this run does by default.)
        simulated, _ = replay(
            make_policy(policy),
            trace,
            dict.fromkeys(ranks, object_bytes),
            per_node_bytes * NODES,
        )
        row["simulated_single_cache_hit_ratio"] = simulated
        runs.append(row)
        print(json.dumps(row, default=float), flush=True)
        for node in nodes:
            node.stop()
    return {
        "objects": args.objects,
        "object_bytes": object_bytes,
        "dataset_bytes": dataset_bytes,
        "nodes": NODES,
        "cache_bytes_per_node": per_node_bytes,
        "capacity_fraction": args.capacity_fraction,
        "zipf_alpha": args.alpha,
        "requests_per_policy": args.requests,
        "warmup_fraction_not_counted": args.warmup_fraction,
        "concurrency": args.concurrency,
        "clients": args.clients,
        "seed": args.seed,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "runs": runs,
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Skewed load: S3-FIFO vs LRU on a real 3-node cluster",
        "",
        f"{r['nodes']} cachenode processes on loopback, cache of "
        f"{r['cache_bytes_per_node'] / 2**20:.1f} MiB each = {r['capacity_fraction']:.0%} of a "
        f"`file://` data set of {r['objects']} one-block objects of "
        f"{r['object_bytes'] // 1024} KiB ({r['dataset_bytes'] / 2**20:.0f} MiB); "
        f"{r['concurrency']} concurrent readers over {r['clients']} `CacheClient`s without a "
        f"memory tier; Zipf({r['zipf_alpha']}) popularity, {r['requests_per_policy']:,} "
        f"reads per policy, the first {r['warmup_fraction_not_counted']:.0%} not counted; "
        "the same request sequence for both policies. Produced by `loadtest/skewed_load.py`.",
        "",
        "| policy | hit ratio (nodes) | trace sim, one cache of the same size | origin requests "
        "| client fallbacks to origin | p50 | p90 | p99 | reads/s | node CPU ms per read "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lat = x["latency_ms"]
        lines.append(
            f"| {x['policy']} | {x['hit_ratio']:.1%} | {x['simulated_single_cache_hit_ratio']:.1%} "
            f"| {x['origin_requests']:,} | {x['client_origin_fallbacks']} "
            f"| {lat['p50']:.1f} ms | {lat['p90']:.1f} ms | {lat['p99']:.1f} ms "
            f"| {x['reads_per_second']:.0f} | {x['node_cpu_ms_per_read']:.2f} | {x['errors']} |"
        )
    if len(r["runs"]) == 2:
        a, b = r["runs"]
        lines += [
            "",
            f"{a['policy']} has {1 - (1 - a['hit_ratio']) / (1 - b['hit_ratio']):.1%} fewer "
            f"misses than {b['policy']} ({a['origin_requests']:,} origin requests against "
            f"{b['origin_requests']:,}).",
        ]
    lines += [
        "",
        "Latencies are whole-object reads (256 KiB) as the client sees them, with the load "
        "generator, the nodes and etcd sharing this machine's cores: compare the policies, "
        "not the absolute numbers. The trace simulation is one cache of the cluster's total "
        "size; the cluster splits it over the ring's owners, and hot blocks read through "
        "several owners take a copy on each.",
    ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    runs = r["runs"]
    names = [x["policy"] for x in runs]
    fig, (ax1, ax2) = harness.two_panels((10, 4.2))
    pos = range(len(runs))
    ax1.bar([p - 0.2 for p in pos], [x["hit_ratio"] for x in runs], 0.4, label="3-node cluster")
    ax1.bar(
        [p + 0.2 for p in pos],
        [x["simulated_single_cache_hit_ratio"] for x in runs],
        0.4,
        label="trace sim, one cache",
        color="tab:gray",
    )
    for p, x in zip(pos, runs, strict=True):
        ax1.annotate(f"{x['hit_ratio']:.1%}", (p - 0.2, x["hit_ratio"]), ha="center", va="bottom")
    ax1.set_xticks(list(pos), names)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("hit ratio")
    ax1.set_title(
        f"Hit ratio, cache = {r['capacity_fraction']:.0%} of data, Zipf {r['zipf_alpha']}"
    )
    ax1.legend(fontsize=8, loc="upper right")
    width = 0.27
    for offset, key, color in ((-width, "p50", "tab:green"), (0, "p90", "tab:olive")):
        ax2.bar(
            [p + offset for p in pos],
            [x["latency_ms"][key] for x in runs],
            width,
            label=key,
            color=color,
        )
    ax2.bar(
        [p + width for p in pos],
        [x["latency_ms"]["p99"] for x in runs],
        width,
        label="p99",
        color="tab:red",
    )
    for p, x in zip(pos, runs, strict=True):
        ax2.annotate(
            f"{x['latency_ms']['p99']:.0f} ms",
            (p + width, x["latency_ms"]["p99"]),
            ha="center",
            va="bottom",
        )
    ax2.set_xticks(list(pos), names)
    ax2.set_ylabel("read latency, ms")
    ax2.set_title(f"Read latency ({r['concurrency']} concurrent readers)")
    ax2.legend(fontsize=8)
    harness.save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--object-kib", type=int, default=256)
    parser.add_argument("--requests", type=int, default=12_000, help="reads per policy")
    parser.add_argument("--alpha", type=float, default=0.9, help="Zipf exponent")
    parser.add_argument("--capacity-fraction", type=float, default=0.20)
    parser.add_argument("--warmup-fraction", type=float, default=0.10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--policies", nargs="+", default=["s3fifo", "lru"])
    parser.add_argument("--seed", type=int, default=42)
    harness.add_output_options(parser)
    args = parser.parse_args()
    harness.run_and_save(
        lambda root, procs, _workers: asyncio.run(run(args, root, procs)),
        temp_prefix="ringcache-skew-",
        keep=args.keep,
        name="skewed_load",
        markdown=markdown,
        plot=plot,
    )


if __name__ == "__main__":
    main()
