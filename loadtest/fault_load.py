#!/usr/bin/env python3
"""Load with faults: 200 readers on a 3-node cluster, one node SIGKILLed and restarted,
then compound faults (a node dead and another hung; etcd paused with a node hung).

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
cache dir and port (same node id, so it gets its blocks back). At ``--dead-hung-at`` (45 s)
node 1 gets SIGKILL and node 2 SIGSTOP for ``--fault-seconds`` (5 s; node 1's lease does
not expire in that time, so it stays on every ring), then node 2 gets SIGCONT and node 1
is restarted. At ``--etcd-pause-at`` (60 s) etcd and node 2 get SIGSTOP for
``--fault-seconds``, then SIGCONT. A read that raises, takes
longer than ``--read-timeout`` or returns other bytes is a failed read (target: 0).

It reports reads served, failed reads, p50/p99 latency over the whole run and for reads
started in the 5 s after the kill, p50/p99/worst for reads started during each compound
fault, the clients' ``ringcache_client_fallbacks_total`` by
reason and ``ringcache_client_block_reads_total`` by source (summed over the worker
processes' own registries), each node's RSS (``VmRSS`` in ``/proc/<pid>/status``) before
the load and at its end, and the CPU the workers and nodes used (to see whether the load
generator or the cluster is the limit).

    .venv/bin/python -m loadtest.fault_load             # ~2 minutes

Results: ``loadtest/results/fault_load.json`` and ``fault_load.md``. Every process it
starts is stopped on exit, error or Ctrl-C, and the temp dir is removed (``--keep`` leaves
it, with the nodes' logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clientlib.launcher import Etcd, Node, free_port, start_etcd, start_node
from loadtest import harness

NODES = 3
CLUSTER = "faultload"
AFTER_KILL_WINDOW = 5.0


# ----------------------------------------------------------------------------- workers


async def _worker(idx: int, cfg: dict[str, Any], go: Any, start_at: Any, out: Any) -> dict:
    """One load process's share of the tasks and clients (a ``harness.WorkerGroup`` worker)."""
    from prometheus_client import REGISTRY

    from clientlib import CacheClient

    expected = {url: harness.file_url_bytes(url) for url in cfg["urls"]}
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
    async with harness.started_clients(clients):
        await harness.wait_for_ring(
            clients, NODES, f"worker {idx}: clients did not see {NODES} nodes"
        )
        t0 = await harness.ready_then_start(f"worker {idx}", idx, go, start_at, out)
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


# ----------------------------------------------------------------------------- helpers


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def lat_summary(values: list[float]) -> dict[str, float]:
    return {"reads": len(values), **harness.latency_ms(values)}


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


# ----------------------------------------------------------------------------- the run


class CompoundFault:
    """Faults applied together at ``at`` and undone ``seconds`` later, times in ``events``."""

    def __init__(
        self,
        name: str,
        at: float,
        seconds: float,
        apply: Callable[[], None],
        undo: Callable[[], None],
    ) -> None:
        self.name, self.at, self.until = name, at, at + seconds
        self._apply, self._undo = apply, undo
        self._state = "pending"

    def step(self, now: float, events: dict[str, Any], t0: float) -> None:
        if self._state == "pending" and now >= self.at:
            self._apply()
            events[f"{self.name}_at"] = round(time.time() - t0, 3)
            self._state = "on"
            print(f"t={events[f'{self.name}_at']:.1f}s {self.name} on", flush=True)
        elif self._state == "on" and now >= self.until:
            events[f"{self.name}_ended_at"] = round(time.time() - t0, 3)
            self._undo()
            self._state = "done"
            print(f"t={events[f'{self.name}_ended_at']:.1f}s {self.name} off", flush=True)


def compound_faults(
    args: argparse.Namespace, etcd: Etcd, nodes: list[Node], restart: Callable[[int], Node]
) -> list[CompoundFault]:
    """Node 1 dead with node 2 hung; then etcd paused with node 2 hung."""

    def dead_hung() -> None:
        nodes[1].kill()  # its lease outlives the fault: still on every ring
        nodes[2].signal(signal.SIGSTOP)

    def dead_hung_over() -> None:
        nodes[2].signal(signal.SIGCONT)
        nodes[1] = restart(1)

    def etcd_paused_hung() -> None:
        etcd.signal(signal.SIGSTOP)
        nodes[2].signal(signal.SIGSTOP)

    def etcd_paused_hung_over() -> None:
        nodes[2].signal(signal.SIGCONT)
        etcd.signal(signal.SIGCONT)

    return [
        CompoundFault(
            "dead_hung", args.dead_hung_at, args.fault_seconds, dead_hung, dead_hung_over
        ),
        CompoundFault(
            "etcd_paused_hung",
            args.etcd_pause_at,
            args.fault_seconds,
            etcd_paused_hung,
            etcd_paused_hung_over,
        ),
    ]


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
    object_bytes = args.object_mib * 2**20
    data, urls = harness.write_objects(root, args.objects, object_bytes, rng)
    os.sync()

    etcd = start_etcd(root / "etcd")
    procs.append(etcd)
    harness.set_block_size(etcd.url, CLUSTER, args.block_kib * 1024)
    ports = [free_port() for _ in range(NODES)]
    nodes: list[Node] = []
    procs.append(nodes)
    for i, port in enumerate(ports):
        nodes.append(start_cluster_node(etcd, root, data, i, port))

    # Warm: every block of the working set read once through the cluster.
    started = time.perf_counter()
    asyncio.run(warm(etcd.url, urls))
    warm_seconds = time.perf_counter() - started
    warm_stats = [harness.node_stats(n) for n in nodes]
    blocks_total = args.objects * -(-object_bytes // (args.block_kib * 1024))
    print(
        f"warm: {blocks_total} blocks in {warm_seconds:.1f} s, nodes hold "
        f"{[s['blocks'] for s in warm_stats]}",
        flush=True,
    )

    # Workers.
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
    group = harness.WorkerGroup(_worker, ((i, cfg) for i in range(args.procs)), workers)
    group.wait_ready()

    rss_before = {n.addr: rss_kib(n.pid) for n in nodes}
    node_cpu0 = {n.addr: harness.cpu_seconds(n.pid) for n in nodes}
    stats_before = [harness.node_stats(n) for n in nodes]
    t0 = group.start(1.0)
    print(
        f"load: {args.concurrency} tasks in {args.procs} processes for {args.duration}s", flush=True
    )

    victim_index = 0
    victim = nodes[victim_index]
    events: dict[str, Any] = {}
    timeline: list[dict[str, Any]] = []
    restarted: Node | None = None
    killed = False
    compound = compound_faults(
        args, etcd, nodes, lambda i: start_cluster_node(etcd, root, data, i, ports[i])
    )
    while True:
        now = time.time() - t0
        if now >= args.duration:
            break
        for fault in compound:
            fault.step(now, events, t0)
        if not killed and now >= args.kill_at:
            events["victim"] = victim.addr
            events["victim_rss_kib_at_kill"] = rss_kib(victim.pid)
            events["victim_cpu_seconds_at_kill"] = round(
                harness.cpu_seconds(victim.pid) - node_cpu0[victim.addr], 2
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
            events["restarted_blocks_at_start"] = harness.node_stats(restarted)["blocks"]
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

    deadline = time.monotonic() + args.read_timeout + 60
    results = group.results(lambda: max(1.0, deadline - time.monotonic()))
    rss_after = {n.addr: rss_kib(n.pid) for n in nodes}
    node_cpu = {n.addr: round(harness.cpu_seconds(n.pid) - node_cpu0[n.addr], 2) for n in nodes}
    stats_after = [harness.node_stats(n) for n in nodes]

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
    after_restart = [
        lat
        for s, lat in zip(starts, lats, strict=True)
        if after_restart_t <= s < min(f.at for f in compound)
    ]
    during = {
        f.name: lat_summary(
            [
                lat
                for s, lat in zip(starts, lats, strict=True)
                if events[f"{f.name}_at"] <= s < events[f"{f.name}_ended_at"]
            ]
        )
        for f in compound
    }
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
                "p99_ms": round(harness.percentile([lat for lat, _ in window], 0.99) * 1e3, 1),
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
        "latency_during_compound_faults": during,
        "dead_hung_at": args.dead_hung_at,
        "etcd_pause_at": args.etcd_pause_at,
        "fault_seconds": args.fault_seconds,
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
        "load_average_end": harness.load_avg(),
        **harness.machine_info(),
    }


async def warm(etcd_url: str, urls: list[str]) -> None:
    from clientlib import CacheClient

    async with CacheClient(etcd_url, CLUSTER, memory_cache_bytes=0) as client:
        await harness.wait_for_ring([client], NODES, "warm-up client did not see the nodes")
        sem = asyncio.Semaphore(8)

        async def one(url: str) -> None:
            async with sem:
                data = await client.read(url)
            if data != harness.file_url_bytes(url):
                raise RuntimeError(f"warm-up read of {url} returned other bytes")

        await asyncio.gather(*(one(u) for u in urls))


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
        "# Fault load: 3 nodes under 200 readers, one SIGKILLed and restarted, then compound "
        "faults",
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
        "| p50 / p99 / max, 5 s after kill | p99 after restart (to the compound faults) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['reads_ok']:,} | {r['failed_reads']} | {r['reads_per_second']:.0f} "
        f"| {la['p50_ms']:.1f} ms | {la['p99_ms']:.1f} ms | {lb['p99_ms']:.1f} ms "
        f"| {lk['p50_ms']:.1f} / {lk['p99_ms']:.1f} / {lk['max_ms']:.0f} ms "
        f"({lk['reads']:,} reads) | {lr['p99_ms']:.1f} ms |",
        "",
        f"Compound faults, {r['fault_seconds']:.0f} s each (reads started while the fault was "
        "on): **dead + hung**, node 1 SIGKILLed (its lease not yet expired, so still on every "
        "ring) and node 2 SIGSTOPped, then node 2 resumed and node 1 restarted; **etcd paused "
        "+ hung**, etcd and node 2 SIGSTOPped, then both resumed. Peer timeouts are the "
        "client's defaults (15 s without a byte, 60 s in all); hedge delay "
        f"{r['hedge_delay']} s.",
        "",
        "| compound fault | started at | reads | p50 | p99 | worst read |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name.replace('_', ' ')} | {ev.get(name + '_at')} s | {lat['reads']:,} "
            f"| {lat['p50_ms']:.1f} ms | {lat['p99_ms']:.1f} ms | {lat['max_ms']:.0f} ms |"
            for name, lat in r["latency_during_compound_faults"].items()
        ),
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
        "Reads per second and p99 (by start time; K = kill, R = restart, D = dead + hung, "
        "E = etcd paused + hung):",
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
            + (" D" if i <= r["dead_hung_at"] < i + 5 else "")
            + (" E" if i <= r["etcd_pause_at"] < i + 5 else "")
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
    parser.add_argument("--duration", type=float, default=75.0)
    parser.add_argument("--kill-at", type=float, default=20.0)
    parser.add_argument("--restart-at", type=float, default=35.0)
    parser.add_argument("--dead-hung-at", type=float, default=45.0)
    parser.add_argument("--etcd-pause-at", type=float, default=60.0)
    parser.add_argument("--fault-seconds", type=float, default=5.0)
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
    harness.add_output_options(parser, "fault_load")
    args = parser.parse_args()
    if not (
        0 < args.kill_at < args.restart_at < args.dead_hung_at
        and args.dead_hung_at + args.fault_seconds < args.etcd_pause_at
        and args.etcd_pause_at + args.fault_seconds < args.duration
    ):
        parser.error(
            "need 0 < --kill-at < --restart-at < --dead-hung-at, and each compound fault "
            "over (--fault-seconds) before the next one and before --duration"
        )
    harness.run_and_save(
        functools.partial(run, args),
        temp_prefix="ringcache-fault-",
        keep=args.keep,
        name=args.name,
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
