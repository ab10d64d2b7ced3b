#!/usr/bin/env python3
"""Load with a fault: 200 readers on a 3-node cluster, one node SIGKILLed and restarted.

What it runs, all on 127.0.0.1: one etcd and 3 ``cachenode`` processes on fixed free
ports, reading through to a ``file://`` origin (a temp dir of ``--objects`` random objects
of ``--object-mib`` MiB, allowed with ``--file-root``; no S3 endpoint, so the origin costs
a local file read). The cluster's block size is set to ``--block-kib`` (256 KiB) with
``cachectl config set block_size`` before the nodes start, so a random read touches one
to three blocks instead of a whole 4 MiB block.

The working set is warmed first (every object read once through the cluster). Then
``--concurrency`` (200) asyncio tasks, spread over ``--procs`` worker processes with
``--clients`` ``CacheClient`` instances in all (no memory tier, so every read goes to the
nodes), read random ranges (random object, offset, and length up to ``--max-read-kib``)
for ``--duration`` (60) s and compare every byte with the data set. At ``--kill-at``
(20 s) node 0 gets SIGKILL; at ``--restart-at`` (35 s) it is started again on the same
cache dir and port (same node id, so it gets its blocks back). A read that raises, takes
longer than ``--read-timeout`` or returns other bytes is a failed read (target: 0).

It reports reads served, failed reads, p50/p99 latency over the whole run and for reads
started in the 5 s after the kill, the clients' ``ringcache_client_fallbacks_total`` by
reason and ``ringcache_client_block_reads_total`` by source (summed over the worker
processes' own registries), each node's RSS (``VmRSS`` in ``/proc/<pid>/status``) before
the load and at its end, and the CPU the workers and nodes used (to see whether the load
generator or the cluster is the limit).

    .venv/bin/python loadtest/fault_load.py             # ~1.5 minutes
    .venv/bin/python loadtest/fault_load.py --duration 20 --kill-at 6 --restart-at 12

Results: ``loadtest/results/fault_load.json`` and ``fault_load.md``. Every process it
starts is stopped on exit, error or Ctrl-C, and the temp dir is removed (``--keep`` leaves
it, with the nodes' logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from clientlib.localcluster import Etcd, Node, free_port, start_etcd, start_node  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NODES = 3
CLUSTER = "faultload"
AFTER_KILL_WINDOW = 5.0


# ----------------------------------------------------------------------------- workers


def worker(
    idx: int,
    cfg: dict[str, Any],
    go: Any,
    start_at: Any,
    out: Any,
) -> None:
    """One load process: its share of the tasks and clients, results to ``out``."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        result = uvloop.run(_worker(idx, cfg, go, start_at, out))
        out.put(("result", idx, result))
    except BaseException as exc:
        out.put(("error", idx, repr(exc)))
        raise


async def _worker(idx: int, cfg: dict[str, Any], go: Any, start_at: Any, out: Any) -> dict:
    from prometheus_client import REGISTRY

    from clientlib import CacheClient

    expected = {url: Path(url.removeprefix("file://")).read_bytes() for url in cfg["urls"]}
    urls = list(expected)
    clients = [
        CacheClient(
            cfg["etcd"],
            CLUSTER,
            memory_cache_bytes=0,
            hedge_delay=cfg["hedge_delay"],
        )
        for _ in range(cfg["clients"])
    ]
    for client in clients:
        await client.start()
    try:
        deadline = time.monotonic() + 30
        while any(len(c.ring) != NODES for c in clients):
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {idx}: clients did not see {NODES} nodes")
            await asyncio.sleep(0.05)
        out.put(("ready", idx, None))
        if not await asyncio.to_thread(go.wait, 120):
            raise TimeoutError(f"worker {idx}: no start signal")
        t0 = start_at.value
        await asyncio.sleep(max(0.0, t0 - time.time()))
        end = t0 + cfg["duration"]
        cpu0 = sum(os.times()[:2])
        starts: list[float] = []
        lats: list[float] = []
        oks: list[bool] = []
        failures: list[dict[str, Any]] = []
        max_read = cfg["max_read"]

        async def task(n: int) -> None:
            rng = random.Random(cfg["seed"] * 1_000_003 + idx * 1000 + n)
            client = clients[n % len(clients)]
            while time.time() < end:
                url = rng.choice(urls)
                want_all = expected[url]
                offset = rng.randrange(len(want_all))
                length = rng.randint(1, min(max_read, len(want_all) - offset))
                began = time.time()
                started = time.perf_counter()
                error = ""
                try:
                    async with asyncio.timeout(cfg["read_timeout"]):
                        data = await client.read(url, offset, length)
                    if data != want_all[offset : offset + length]:
                        error = f"wrong bytes ({len(data)} of {length})"
                except Exception as exc:  # a failed read is a result, not a crash
                    error = repr(exc)[:300]
                lats.append(time.perf_counter() - started)
                starts.append(began - t0)
                oks.append(not error)
                if error and len(failures) < 50:
                    failures.append(
                        {"t": round(began - t0, 3), "url": url, "offset": offset, "error": error}
                    )

        n_tasks = cfg["tasks"][idx]
        await asyncio.gather(*(task(n) for n in range(n_tasks)))
        cpu = sum(os.times()[:2]) - cpu0

        def samples(name: str, label: str) -> dict[str, float]:
            return {
                s.labels[label]: s.value
                for metric in REGISTRY.collect()
                for s in metric.samples
                if s.name == name and s.value
            }

        return {
            "tasks": n_tasks,
            "starts": starts,
            "latencies": lats,
            "ok": oks,
            "failures": failures,
            "cpu_seconds": cpu,
            "fallbacks": samples("ringcache_client_fallbacks_total", "reason"),
            "block_reads": samples("ringcache_client_block_reads_total", "source"),
        }
    finally:
        for client in clients:
            await client.close()


# ----------------------------------------------------------------------------- helpers


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def node_stats(node: Node) -> dict[str, Any]:
    with urllib.request.urlopen(node.url + "/v1/stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lat_summary(values: list[float]) -> dict[str, float]:
    return {
        "reads": len(values),
        "p50_ms": round(percentile(values, 0.50) * 1e3, 2),
        "p99_ms": round(percentile(values, 0.99) * 1e3, 2),
        "max_ms": round(max(values, default=float("nan")) * 1e3, 2),
    }


def rss_under_load(timeline: list[dict[str, Any]]) -> dict[str, dict[str, int | None]]:
    """Per node address: peak RSS while the load ran, and the last sample before it ended.

    A restarted node has the same address, so its figures mix the killed process (peak)
    and the restarted one (last sample).
    """
    out: dict[str, dict[str, int | None]] = {}
    for sample in timeline:
        for addr, kib in sample["rss_kib"].items():
            row = out.setdefault(addr, {"peak": None, "last": None})
            if kib is not None:
                row["peak"] = max(row["peak"] or 0, kib)
                row["last"] = kib
    return out


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- the run


def start_cluster_node(etcd: Etcd, root: Path, data: Path, i: int, port: int) -> Node:
    return start_node(
        etcd.url,
        CLUSTER,
        root / f"node{i}",
        size="2GiB",
        port=port,
        extra=["--file-root", str(data), "--log-level", "WARNING"],
    )


def run(args: argparse.Namespace, root: Path, procs: list[Any], workers: list[Any]) -> dict:
    rng = random.Random(args.seed)
    data = root / "data"
    data.mkdir()
    object_bytes = args.object_mib * 2**20
    urls = []
    for i in range(args.objects):
        path = data / f"obj-{i:03d}.bin"
        path.write_bytes(rng.randbytes(object_bytes))
        urls.append(f"file://{path}")
    os.sync()

    etcd = start_etcd(root / "etcd")
    procs.append(etcd)
    cachectl = str(Path(sys.executable).with_name("cachectl"))
    set_block_size = ["config", "set", "block_size", str(args.block_kib * 1024)]
    subprocess.run(
        [cachectl, "--etcd", etcd.url, "--cluster", CLUSTER, *set_block_size],
        check=True,
        timeout=30,
        stdout=subprocess.DEVNULL,
    )
    ports = [free_port() for _ in range(NODES)]
    nodes: list[Node] = []
    procs.append(nodes)
    for i, port in enumerate(ports):
        nodes.append(start_cluster_node(etcd, root, data, i, port))

    # Warm: every block of the working set read once through the cluster.
    started = time.perf_counter()
    asyncio.run(warm(etcd.url, urls))
    warm_seconds = time.perf_counter() - started
    warm_stats = [node_stats(n) for n in nodes]
    blocks_total = args.objects * -(-object_bytes // (args.block_kib * 1024))
    print(
        f"warm: {blocks_total} blocks in {warm_seconds:.1f} s, nodes hold "
        f"{[s['blocks'] for s in warm_stats]}",
        flush=True,
    )

    # Workers.
    ctx = mp.get_context("spawn")
    go, start_at, out = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    tasks = [
        args.concurrency // args.procs + (i < args.concurrency % args.procs)
        for i in range(args.procs)
    ]
    per_proc_clients = max(1, args.clients // args.procs)
    cfg = {
        "etcd": etcd.url,
        "urls": urls,
        "clients": per_proc_clients,
        "tasks": tasks,
        "duration": args.duration,
        "max_read": args.max_read_kib * 1024,
        "read_timeout": args.read_timeout,
        "hedge_delay": args.hedge_delay,
        "seed": args.seed,
    }
    for i in range(args.procs):
        p = ctx.Process(target=worker, args=(i, cfg, go, start_at, out), daemon=True)
        p.start()
        workers.append(p)
    ready = 0
    while ready < args.procs:
        kind, idx, payload = out.get(timeout=90)
        if kind == "error":
            raise RuntimeError(f"worker {idx} failed: {payload}")
        ready += kind == "ready"

    rss_before = {n.addr: rss_kib(n.pid) for n in nodes}
    node_cpu0 = {n.addr: cpu_seconds(n.pid) for n in nodes}
    stats_before = [node_stats(n) for n in nodes]
    t0 = time.time() + 1.0
    start_at.value = t0
    go.set()
    print(
        f"load: {args.concurrency} tasks in {args.procs} processes for {args.duration}s", flush=True
    )

    victim_index = 0
    victim = nodes[victim_index]
    events: dict[str, Any] = {}
    timeline: list[dict[str, Any]] = []
    restarted: Node | None = None
    killed = False
    while True:
        now = time.time() - t0
        if now >= args.duration:
            break
        if not killed and now >= args.kill_at:
            events["victim"] = victim.addr
            events["victim_rss_kib_at_kill"] = rss_kib(victim.pid)
            events["victim_cpu_seconds_at_kill"] = round(
                cpu_seconds(victim.pid) - node_cpu0[victim.addr], 2
            )
            victim.kill()
            events["killed_at"] = round(time.time() - t0, 3)
            killed = True
            print(f"t={events['killed_at']:.1f}s SIGKILL {victim.addr}", flush=True)
        if killed and restarted is None and now >= args.restart_at:
            events["restart_requested_at"] = round(now, 3)
            restarted = start_cluster_node(etcd, root, data, victim_index, ports[victim_index])
            nodes[victim_index] = restarted
            node_cpu0[restarted.addr] = 0.0
            events["restarted_healthy_at"] = round(time.time() - t0, 3)
            events["restarted_blocks_at_start"] = node_stats(restarted)["blocks"]
            print(
                f"t={events['restarted_healthy_at']:.1f}s restarted {restarted.addr} "
                f"with {events['restarted_blocks_at_start']} blocks on disk",
                flush=True,
            )
        timeline.append(
            {
                "t": round(now, 2),
                "rss_kib": {n.addr: rss_kib(n.pid) if n.alive() else None for n in nodes},
            }
        )
        time.sleep(min(0.5, max(0.01, args.duration - now)))

    results: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + args.read_timeout + 60
    while len(results) < args.procs:
        kind, idx, payload = out.get(timeout=max(1.0, deadline - time.monotonic()))
        if kind == "error":
            raise RuntimeError(f"worker {idx} failed: {payload}")
        if kind == "result":
            results[idx] = payload
    for p in workers:
        p.join(10)
    rss_after = {n.addr: rss_kib(n.pid) for n in nodes}
    node_cpu = {n.addr: round(cpu_seconds(n.pid) - node_cpu0[n.addr], 2) for n in nodes}
    stats_after = [node_stats(n) for n in nodes]

    starts = [s for r in results.values() for s in r["starts"]]
    lats = [x for r in results.values() for x in r["latencies"]]
    oks = [x for r in results.values() for x in r["ok"]]
    good = [lat for lat, ok in zip(lats, oks, strict=True) if ok]
    kill_t = events.get("killed_at", args.kill_at)
    after_kill = [
        lat for s, lat in zip(starts, lats, strict=True) if kill_t <= s < kill_t + AFTER_KILL_WINDOW
    ]
    before_kill = [lat for s, lat in zip(starts, lats, strict=True) if s < kill_t]
    after_restart_t = events.get("restarted_healthy_at", args.restart_at)
    after_restart = [lat for s, lat in zip(starts, lats, strict=True) if s >= after_restart_t]
    per_second = []
    for second in range(int(args.duration)):
        window = [
            (lat, ok)
            for s, lat, ok in zip(starts, lats, oks, strict=True)
            if second <= s < second + 1
        ]
        per_second.append(
            {
                "t": second,
                "reads": len(window),
                "failed": sum(not ok for _, ok in window),
                "p99_ms": round(percentile([lat for lat, _ in window], 0.99) * 1e3, 1),
            }
        )

    def merged(key: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in results.values():
            for k, v in r[key].items():
                total[k] = total.get(k, 0) + int(v)
        return dict(sorted(total.items()))

    worker_cpu = [round(r["cpu_seconds"], 2) for r in results.values()]
    return {
        "nodes": NODES,
        "origin": "file:// (temp dir on local disk, --file-root)",
        "objects": args.objects,
        "object_bytes": object_bytes,
        "block_size": args.block_kib * 1024,
        "blocks_total": blocks_total,
        "warm_seconds": round(warm_seconds, 2),
        "warm_node_blocks": [s["blocks"] for s in warm_stats],
        "concurrency": args.concurrency,
        "procs": args.procs,
        "clients": per_proc_clients * args.procs,
        "max_read_bytes": args.max_read_kib * 1024,
        "duration": args.duration,
        "kill_at": args.kill_at,
        "restart_at": args.restart_at,
        "read_timeout": args.read_timeout,
        "hedge_delay": args.hedge_delay,
        "events": events,
        "reads": len(lats),
        "reads_ok": len(good),
        "failed_reads": len(lats) - len(good),
        "reads_per_second": round(len(lats) / args.duration, 1),
        "failures": [f for r in results.values() for f in r["failures"]][:50],
        "latency_all": lat_summary(lats),
        "latency_before_kill": lat_summary(before_kill),
        "latency_after_kill_5s": lat_summary(after_kill),
        "latency_after_restart": lat_summary(after_restart),
        "client_fallbacks": merged("fallbacks"),
        "client_block_reads": merged("block_reads"),
        "worker_cpu_seconds": worker_cpu,
        "worker_cpu_utilisation": [round(c / args.duration, 2) for c in worker_cpu],
        "node_cpu_seconds": node_cpu,
        "node_rss_kib_before": rss_before,
        "node_rss_kib_under_load": rss_under_load(timeline),
        "node_rss_kib_after": rss_after,
        "node_stats_before": [
            {k: s[k] for k in ("id", "blocks", "hits", "misses", "origin_requests")}
            for s in stats_before
        ],
        "node_stats_after": [
            {k: s[k] for k in ("id", "blocks", "hits", "misses", "origin_requests")}
            for s in stats_after
        ],
        "per_second": per_second,
        "rss_timeline": timeline[:: max(1, len(timeline) // 120)],
        "load_average_end": load_avg(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


async def warm(etcd_url: str, urls: list[str]) -> None:
    from clientlib import CacheClient

    async with CacheClient(etcd_url, CLUSTER, memory_cache_bytes=0) as client:
        deadline = time.monotonic() + 30
        while len(client.ring) != NODES:
            if time.monotonic() > deadline:
                raise TimeoutError("warm-up client did not see the nodes")
            await asyncio.sleep(0.05)
        sem = asyncio.Semaphore(8)

        async def one(url: str) -> None:
            async with sem:
                data = await client.read(url)
            if data != Path(url.removeprefix("file://")).read_bytes():
                raise RuntimeError(f"warm-up read of {url} returned other bytes")

        await asyncio.gather(*(one(u) for u in urls))


def stop_all(procs: list[Any], workers: list[Any]) -> None:
    """Stop the workers, then the nodes, then etcd; each even if another fails."""
    for p in workers:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    for item in reversed(procs):
        for proc in item if isinstance(item, list) else [item]:
            with contextlib.suppress(Exception):
                proc.stop()


def markdown(r: dict[str, Any]) -> str:
    ev = r["events"]
    la, lk, lb, lr = (
        r["latency_all"],
        r["latency_after_kill_5s"],
        r["latency_before_kill"],
        r["latency_after_restart"],
    )
    mib = 1024
    lines = [
        "# Fault load: 3 nodes, one SIGKILLed and restarted under 200 readers",
        "",
        f"{r['nodes']} cachenode processes and etcd on loopback, origin `file://` (a temp dir "
        f"on local disk), {r['objects']} objects of {r['object_bytes'] // 2**20} MiB, block "
        f"size {r['block_size'] // 1024} KiB ({r['blocks_total']} blocks, warmed before the "
        f"load). {r['concurrency']} concurrent readers (asyncio tasks in {r['procs']} worker "
        f"processes, {r['clients']} `CacheClient`s without a memory tier) read random ranges "
        f"of 1 B to {r['max_read_bytes'] // 1024} KiB for {r['duration']} s and compare every "
        f"byte. Node `{ev.get('victim')}` got SIGKILL at {ev.get('killed_at')} s and was "
        f"started again on the same cache dir and port at {ev.get('restart_requested_at')} s "
        f"(healthy at {ev.get('restarted_healthy_at')} s, {ev.get('restarted_blocks_at_start')} "
        "blocks still on its disk). Produced by `loadtest/fault_load.py`, one run on a shared, "
        f"noisy {r['cpus']}-core VM (load average at the end {r['load_average_end']}).",
        "",
        "| reads served | failed reads | reads/s | p50 | p99 | p99 before kill "
        "| p50 / p99 / max, 5 s after kill | p99 after restart |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['reads_ok']:,} | {r['failed_reads']} | {r['reads_per_second']:.0f} "
        f"| {la['p50_ms']:.1f} ms | {la['p99_ms']:.1f} ms | {lb['p99_ms']:.1f} ms "
        f"| {lk['p50_ms']:.1f} / {lk['p99_ms']:.1f} / {lk['max_ms']:.0f} ms "
        f"({lk['reads']:,} reads) | {lr['p99_ms']:.1f} ms |",
        "",
        "Client fallbacks (`ringcache_client_fallbacks_total`, by reason, summed over the "
        "workers): "
        + (", ".join(f"`{k}` {v:,}" for k, v in r["client_fallbacks"].items()) or "none")
        + ". Blocks by source (`ringcache_client_block_reads_total`): "
        + ", ".join(f"`{k}` {v:,}" for k, v in r["client_block_reads"].items())
        + ".",
        "",
        "| node | RSS before load | peak RSS under load | RSS at the end of the load "
        "| RSS after the load (clients closed) | node CPU during load |",
        "|---|---|---|---|---|---|",
    ]
    for addr, before in r["node_rss_kib_before"].items():
        after = r["node_rss_kib_after"].get(addr)
        note = ""
        if addr == ev.get("victim"):
            note = (
                f" (killed process: {ev.get('victim_rss_kib_at_kill', 0) / mib:.0f} MiB at "
                "the kill; end and after: the restarted process)"
            )
        under = r["node_rss_kib_under_load"].get(addr, {})
        lines.append(
            f"| `{addr}`{note} | {before / mib:.0f} MiB | {(under.get('peak') or 0) / mib:.0f} MiB "
            f"| {(under.get('last') or 0) / mib:.0f} MiB | {(after or 0) / mib:.0f} MiB "
            f"| {r['node_cpu_seconds'].get(addr, 0):.1f} s |"
        )
    lines += [
        "",
        f"Load generator CPU: {r['worker_cpu_seconds']} s per worker process over "
        f"{r['duration']} s (utilisation {r['worker_cpu_utilisation']}).",
        "",
        "Reads per second and p99 (by start time; K = kill, R = restart):",
        "",
        "| second | " + " | ".join(str(x["t"]) for x in r["per_second"][::5]) + " |",
        "|---|" + "---|" * len(r["per_second"][::5]),
        "| reads/s (5 s mean) | "
        + " | ".join(
            f"{sum(y['reads'] for y in r['per_second'][i : i + 5]) / 5:.0f}"
            for i in range(0, len(r["per_second"]), 5)
        )
        + " |",
        "| worst p99 in 5 s | "
        + " | ".join(
            f"{max(y['p99_ms'] for y in r['per_second'][i : i + 5]):.0f} ms"
            + (" K" if i <= r["kill_at"] < i + 5 else "")
            + (" R" if i <= r["restart_at"] < i + 5 else "")
            for i in range(0, len(r["per_second"]), 5)
        )
        + " |",
        "",
        "Everything (etcd, 3 nodes, the load processes) shares the machine's cores, and other "
        "programs ran on it too: read the figures as this run's, with 10-20% noise, not as "
        "a node's capacity. Latencies are per `client.read` call (one to three 256 KiB blocks "
        "fetched whole, since there is no memory tier), with 200 reads in flight.",
    ]
    if r["failures"]:
        lines += ["", "First failed reads:", ""]
        lines += [
            f"- t={f['t']} s {f['url']} @{f['offset']}: {f['error']}" for f in r["failures"][:10]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--kill-at", type=float, default=20.0)
    parser.add_argument("--restart-at", type=float, default=35.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--procs", type=int, default=2, help="worker processes")
    parser.add_argument("--clients", type=int, default=8, help="CacheClients in all")
    parser.add_argument("--objects", type=int, default=48)
    parser.add_argument("--object-mib", type=int, default=2)
    parser.add_argument("--block-kib", type=int, default=256)
    parser.add_argument("--max-read-kib", type=int, default=512)
    parser.add_argument("--read-timeout", type=float, default=30.0)
    parser.add_argument("--hedge-delay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="fault_load", help="results file stem")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    args = parser.parse_args()
    if not 0 < args.kill_at < args.restart_at < args.duration:
        parser.error("need 0 < --kill-at < --restart-at < --duration")

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    root = Path(tempfile.mkdtemp(prefix="ringcache-fault-"))
    procs: list[Any] = []
    workers: list[Any] = []
    started = time.perf_counter()
    try:
        result = run(args, root, procs, workers)
    finally:
        stop_all(procs, workers)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
