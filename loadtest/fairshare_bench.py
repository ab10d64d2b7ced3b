#!/usr/bin/env python3
"""Tenant fair share: a light tenant's latency next to a heavy tenant on one saturated node.

What it runs, all on 127.0.0.1: one etcd and ONE ``cachenode`` started with
``--token-file`` (a fresh cluster secret), ``--serve-slots`` 4 (so 68 concurrent readers
saturate it: at most 4 block requests are served at once, the rest queue) and a
``file://`` origin (a temp dir of ``--objects`` (16) one-block objects of ``--block-kib``
KiB, 4 MiB by default; the cluster's block size is set to the same with ``cachectl config
set``). The objects are read once first, so every measured read is a hit. With 4 MiB
blocks a slot stays busy while the client reads the body, so the 4 slots really fill up
and requests wait in the scheduler's queues; with 256 KiB blocks a hit leaves the slot
at once and the queues stayed empty on a 2-core VM (the limit was CPU, not slots).

Tokens come from the real CLI, ``cachectl --token-file SECRET token create --scope
file://DATA/ --tenant NAME``. Each tenant runs in its own worker process (its own event
loop, so one tenant's client CPU does not delay the other's reads inside one loop), with
``CacheClient(token_file=...)`` and no memory tier: ``--heavy`` (64) concurrent readers
for tenant "heavy" and ``--light`` (4) for tenant "light", each reading whole random
blocks in a loop for ``--duration`` s (the first ``--warmup`` s not counted).

Runs, one after the other against the same warm node:

1. ``light alone``: only the light tenant;
2. ``fair share``: both, with tokens of tenants "heavy" and "light": the node's
   deficit round robin (``cachenode/fairshare.py``) alternates between the two queues;
3. ``no fair share``: both, with tokens that name the SAME tenant ("shared"): every
   request then lands in one queue, served first come first served, which is what a
   node without fair share does (the scheduler code is the same, only the tenant differs);
4. ``light alone, again``: to see how much the machine drifted during the runs.

Per run and tenant: reads, reads/s, MiB/s and share of the run's throughput, p50/p99 read
latency (client side), and the mean time its requests waited for a serving slot on the node
(``ringcache_tenant_queue_seconds``). Target (issue 9): the light tenant's p99 with fair
share within 2x of its p99 alone.

    .venv/bin/python -m loadtest.fairshare_bench          # ~2 minutes
    .venv/bin/python -m loadtest.fairshare_bench --duration 8 --warmup 1

Results: ``loadtest/results/fairshare.json``, ``fairshare.md`` and ``fairshare.png``.
Every process it starts is stopped on exit, error or Ctrl-C, and the temp dir is removed
(``--keep`` leaves it, with the node's log).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from clientlib.launcher import Node, start_etcd, start_node
from loadtest import harness

CLUSTER = "fairshare"


# ----------------------------------------------------------------------------- workers


async def _worker(label: str, cfg: dict[str, Any], go: Any, start_at: Any, out: Any) -> dict:
    """One tenant's readers, in a worker process of ``run_once``'s ``harness.WorkerGroup``."""
    from clientlib import CacheClient

    expected = {url: harness.file_url_bytes(url) for url in cfg["urls"]}
    urls = list(expected)
    clients = [
        CacheClient(cfg["etcd"], CLUSTER, memory_cache_bytes=0, token_file=cfg["token_file"])
        for _ in range(max(1, -(-cfg["concurrency"] // 32)))
    ]
    async with harness.started_clients(clients):
        await harness.wait_for_ring(clients, 1, f"{label}: clients did not see the node")
        t0 = await harness.ready_then_start(label, label, go, start_at, out)
        measure_from, end = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
        lats: list[float] = []
        nbytes = 0
        errors: list[str] = []
        cpu0 = 0.0

        async def reader(n: int) -> None:
            nonlocal nbytes
            rng = random.Random(f"{cfg['seed']}-{label}-{n}")
            client = clients[n % len(clients)]
            while (now := time.time()) < end:
                url = rng.choice(urls)
                started = time.perf_counter()
                try:
                    data = await client.read(url)
                    if data != expected[url]:
                        raise RuntimeError(f"wrong bytes for {url}")
                except Exception as exc:  # counted, the run goes on
                    if len(errors) < 20:
                        errors.append(repr(exc)[:200])
                    continue
                if now >= measure_from:
                    lats.append(time.perf_counter() - started)
                    nbytes += len(data)

        async def cpu_mark() -> None:
            nonlocal cpu0
            await asyncio.sleep(max(0.0, measure_from - time.time()))
            cpu0 = sum(os.times()[:2])

        await asyncio.gather(cpu_mark(), *(reader(n) for n in range(cfg["concurrency"])))
        return {
            "latencies": lats,
            "bytes": nbytes,
            "errors": errors,
            "error_count": len(errors),
            "cpu_seconds": sum(os.times()[:2]) - cpu0,
        }


# ----------------------------------------------------------------------------- helpers


#: A node's per-tenant samples :func:`tenant_metrics` reads (after ``ringcache_tenant_``).
TENANT_SAMPLES = ("queue_seconds_sum", "queue_seconds_count", "served_bytes_total")


def tenant_metrics(node: Node) -> dict[str, dict[str, float]]:
    """Per tenant: queue wait sum and count, served bytes (from the node's /metrics)."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    wanted = {f"ringcache_tenant_{name}" for name in TENANT_SAMPLES}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and "tenant" in sample.labels:
                name = sample.name.removeprefix("ringcache_tenant_")
                out.setdefault(sample.labels["tenant"], {})[name] = sample.value
    return out


def run_once(
    name: str,
    groups: list[tuple[str, str, str, int]],
    node: Node,
    cfg: dict[str, Any],
    workers: list[Any],
) -> dict[str, Any]:
    """One run: a worker process per group (label, tenant, token file, readers)."""
    group = harness.WorkerGroup(
        _worker,
        (
            (label, {**cfg, "token_file": token_file, "concurrency": concurrency})
            for label, _tenant, token_file, concurrency in groups
        ),
        workers,
    )
    group.wait_ready(f"{name}: ")
    t0 = group.start(0.5)
    time.sleep(max(0.0, t0 + cfg["warmup"] - time.time()))
    metrics0, cpu0 = tenant_metrics(node), harness.cpu_seconds(node.pid)
    time.sleep(max(0.0, t0 + cfg["warmup"] + cfg["duration"] - time.time()))
    metrics1, node_cpu = tenant_metrics(node), harness.cpu_seconds(node.pid) - cpu0
    load = harness.load_avg()
    results = group.results(lambda: 60, f"{name}: ")
    total_bytes = sum(r["bytes"] for r in results.values())
    tenants = []
    for label, tenant, _tok, concurrency in groups:
        r = results[label]
        lats = r["latencies"]
        m0, m1 = metrics0.get(tenant, {}), metrics1.get(tenant, {})
        waits = m1.get("queue_seconds_count", 0) - m0.get("queue_seconds_count", 0)
        wait_sum = m1.get("queue_seconds_sum", 0) - m0.get("queue_seconds_sum", 0)
        tenants.append(
            {
                "label": label,
                "tenant_on_node": tenant,
                "readers": concurrency,
                "reads": len(lats),
                "reads_per_second": round(len(lats) / cfg["duration"], 1),
                "mib_per_second": round(r["bytes"] / cfg["duration"] / 2**20, 1),
                "share": round(r["bytes"] / total_bytes, 4) if total_bytes else 0.0,
                **harness.latency_ms(lats),
                "errors": r["error_count"],
                "error_samples": r["errors"][:5],
                "client_cpu_seconds": round(r["cpu_seconds"], 2),
                "node_queue_wait_mean_ms_of_tenant_queue": round(
                    wait_sum / waits * 1e3 if waits else 0.0, 2
                ),
            }
        )
    row = {
        "run": name,
        "tenants": tenants,
        "node_cpu_seconds": round(node_cpu, 2),
        "node_cpu_utilisation": round(node_cpu / cfg["duration"], 2),
        "reads_per_second": round(sum(t["reads_per_second"] for t in tenants), 1),
        "load_average": load,
    }
    print(json.dumps(row), flush=True)
    return row


def make_token(secret: Path, scope: str, tenant: str, path: Path) -> str:
    create = ["--scope", scope, "--tenant", tenant]
    token = subprocess.run(
        [harness.CACHECTL, "--token-file", str(secret), "token", "create", *create],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


def run(args: argparse.Namespace, root: Path, procs: list[Any], workers: list[Any]) -> dict:
    rng = random.Random(args.seed)
    block = args.block_kib * 1024
    data, urls = harness.write_objects(root, args.objects, block, rng)
    secret = root / "cluster.secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    scope = f"file://{data}/"
    tokens = {
        t: make_token(secret, scope, t, root / f"{t}.token") for t in ("heavy", "light", "shared")
    }

    etcd = start_etcd(root / "etcd")
    procs.append(etcd)
    harness.set_block_size(etcd.url, CLUSTER, block, "--token-file", str(secret))
    node = start_node(
        etcd.url,
        CLUSTER,
        root / "node0",
        extra=[
            "--serve-slots",
            str(args.serve_slots),
            "--token-file",
            str(secret),
            "--file-root",
            str(data),
            "--log-level",
            "WARNING",
        ],
    )
    procs.append(node)
    asyncio.run(warm(etcd.url, urls, str(secret)))

    cfg = {
        "etcd": etcd.url,
        "urls": urls,
        "duration": args.duration,
        "warmup": args.warmup,
        "seed": args.seed,
    }
    heavy, light = args.heavy, args.light
    plan = [
        ("light alone", [("light", "light", tokens["light"], light)]),
        (
            "fair share",
            [
                ("heavy", "heavy", tokens["heavy"], heavy),
                ("light", "light", tokens["light"], light),
            ],
        ),
        (
            "no fair share (one tenant)",
            [
                ("heavy", "shared", tokens["shared"], heavy),
                ("light", "shared", tokens["shared"], light),
            ],
        ),
        ("light alone, again", [("light", "light", tokens["light"], light)]),
    ]
    runs = [run_once(name, groups, node, cfg, workers) for name, groups in plan]

    def light_p99(run_name: str) -> float:
        row = next(r for r in runs if r["run"] == run_name)
        return next(t["p99_ms"] for t in row["tenants"] if t["label"] == "light")

    alone = light_p99("light alone")
    return {
        "node": f"one cachenode, --serve-slots {args.serve_slots}, --token-file",
        "origin": "file:// (temp dir, --file-root); every measured read is a hit",
        "serve_slots": args.serve_slots,
        "block_size": block,
        "objects": args.objects,
        "heavy_readers": heavy,
        "light_readers": light,
        "duration": args.duration,
        "warmup_not_counted": args.warmup,
        "runs": runs,
        "light_p99_alone_ms": alone,
        "light_p99_alone_again_ms": light_p99("light alone, again"),
        "light_p99_fair_ms": light_p99("fair share"),
        "light_p99_no_fair_ms": light_p99("no fair share (one tenant)"),
        "ratio_fair_to_alone": round(light_p99("fair share") / alone, 2),
        "ratio_no_fair_to_alone": round(light_p99("no fair share (one tenant)") / alone, 2),
        "target_ratio": 2.0,
        **harness.machine_info(),
    }


async def warm(etcd_url: str, urls: list[str], secret: str) -> None:
    from clientlib import CacheClient

    async with CacheClient(etcd_url, CLUSTER, memory_cache_bytes=0, token_file=secret) as client:
        await harness.wait_for_ring([client], 1, "warm-up client did not see the node")
        for url in urls:
            if await client.read(url) != harness.file_url_bytes(url):
                raise RuntimeError(f"warm-up read of {url} returned other bytes")


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Tenant fair share on one saturated node",
        "",
        f"One cachenode with `--serve-slots {r['serve_slots']}` and `--token-file`, on "
        f"loopback; {r['objects']} one-block objects of {r['block_size'] // 1024} KiB from a "
        "`file://` origin, all cached before the runs (every read is a hit). Tenant "
        f'"heavy" runs {r["heavy_readers"]} concurrent readers, tenant "light" '
        f"{r['light_readers']}, each tenant in its own process with `CacheClient(token_file="
        "...)` and no memory tier, reading whole blocks for "
        f"{r['duration']:.0f} s per run (after {r['warmup_not_counted']:.0f} s not counted). "
        "Produced by `loadtest/fairshare_bench.py`; one run of each, on a shared, noisy "
        f"{r['cpus']}-core VM.",
        "",
        "| run | tenant (on the node) | readers | reads/s | MiB/s | share | p50 | p99 "
        "| node queue wait, mean | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["runs"]:
        for t in row["tenants"]:
            lines.append(
                f"| {row['run']} | {t['label']} (`{t['tenant_on_node']}`) | {t['readers']} "
                f"| {t['reads_per_second']:.0f} | {t['mib_per_second']:.0f} | {t['share']:.1%} "
                f"| {t['p50_ms']:.1f} ms | {t['p99_ms']:.1f} ms "
                f"| {t['node_queue_wait_mean_ms_of_tenant_queue']:.1f} ms | {t['errors']} |"
            )
    verdict = "meets" if r["ratio_fair_to_alone"] <= r["target_ratio"] else "misses"
    lines += [
        "",
        f"Light tenant p99: alone {r['light_p99_alone_ms']:.1f} ms (again at the end: "
        f"{r['light_p99_alone_again_ms']:.1f} ms), with fair share "
        f"{r['light_p99_fair_ms']:.1f} ms (**{r['ratio_fair_to_alone']:.2f}x** alone; "
        f"target <= {r['target_ratio']:.0f}x: {verdict} it), without fair share "
        f"{r['light_p99_no_fair_ms']:.1f} ms ({r['ratio_no_fair_to_alone']:.2f}x).",
        "",
        "Node CPU per run: "
        + ", ".join(
            f"{row['run']} {row['node_cpu_utilisation']:.0%} of a core" for row in r["runs"]
        )
        + ".",
        "",
        'How "no fair share" is made: the node\'s scheduler keeps one queue per tenant '
        "named in the request's token and goes round the queues by deficit round robin. "
        "Giving both tenants tokens with the same `--tenant shared` puts all 68 readers' "
        "requests in one queue, served first come first served: exactly a node without "
        'fair share, same code and same slots. "node queue wait" is '
        "`ringcache_tenant_queue_seconds` (sum / count) over the run, per tenant queue "
        "(in that run both rows show the one shared queue). It is the part of a read's "
        "latency that fair share controls; the rest is the transfer itself and the client "
        "processes waiting for a CPU, which fair share cannot change.",
        "",
        "Everything (the node, etcd and both tenants' load processes) shares the machine's "
        "cores, and other programs ran on it too, so latencies include waiting for a CPU: "
        "compare the runs with each other, with 10-20% noise, not as absolute figures.",
    ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    runs = r["runs"]
    names = [row["run"].replace(" (", "\n(").replace(", again", "\nagain") for row in runs]
    pos = list(range(len(runs)))
    fig, (ax1, ax2) = harness.two_panels((11, 4.4))

    def tenant(row: dict[str, Any], label: str) -> dict[str, Any] | None:
        return next((t for t in row["tenants"] if t["label"] == label), None)

    light_rps = [tenant(row, "light")["reads_per_second"] for row in runs]  # type: ignore[index]
    heavy_rps = [(tenant(row, "heavy") or {}).get("reads_per_second", 0) for row in runs]
    ax1.bar(pos, heavy_rps, 0.6, label=f"heavy ({r['heavy_readers']} readers)", color="tab:gray")
    ax1.bar(
        pos,
        light_rps,
        0.6,
        bottom=heavy_rps,
        label=f"light ({r['light_readers']} readers)",
        color="tab:blue",
    )
    for p, row in zip(pos, runs, strict=True):
        light = tenant(row, "light")
        assert light is not None
        if len(row["tenants"]) > 1:
            ax1.annotate(
                f"light {light['share']:.0%}",
                (p, row["reads_per_second"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax1.set_xticks(pos, names, fontsize=8)
    ax1.set_ylabel("reads/s (hits)")
    ax1.set_title(f"Throughput by tenant, one node, --serve-slots {r['serve_slots']}")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_ylim(0, max(row["reads_per_second"] for row in runs) * 1.2)

    width = 0.38
    p50 = [tenant(row, "light")["p50_ms"] for row in runs]  # type: ignore[index]
    p99 = [tenant(row, "light")["p99_ms"] for row in runs]  # type: ignore[index]
    ax2.bar([p - width / 2 for p in pos], p50, width, label="light p50", color="tab:green")
    ax2.bar([p + width / 2 for p in pos], p99, width, label="light p99", color="tab:red")
    for p, value in zip(pos, p99, strict=True):
        ax2.annotate(
            f"{value:.0f} ms", (p + width / 2, value), ha="center", va="bottom", fontsize=8
        )
    ax2.axhline(
        2 * r["light_p99_alone_ms"], color="black", ls="--", lw=1, label="target: 2x p99 alone"
    )
    ax2.set_xticks(pos, names, fontsize=8)
    ax2.set_ylabel("light tenant read latency, ms")
    ax2.set_yscale("log")
    ax2.set_title("Light tenant latency")
    ax2.legend(fontsize=8, loc="upper left")
    harness.save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not counted per run")
    parser.add_argument("--heavy", type=int, default=64, help="heavy tenant's readers")
    parser.add_argument("--light", type=int, default=4, help="light tenant's readers")
    parser.add_argument("--serve-slots", type=int, default=4)
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--block-kib", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=11)
    harness.add_output_options(parser, "fairshare")
    args = parser.parse_args()
    harness.run_and_save(
        functools.partial(run, args),
        temp_prefix="ringcache-fair-",
        keep=args.keep,
        name=args.name,
        markdown=markdown,
        plot=plot,
    )


if __name__ == "__main__":
    main()
