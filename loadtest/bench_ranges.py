#!/usr/bin/env python3
"""Range GETs of cached blocks: a node's CPU per 64 KiB range, this tree against a baseline.

What it measures: ``GET /v1/blocks/<id>`` with ``Range: bytes=a-b`` (64 KiB at a random
4 KiB-aligned offset of one of ``--blocks`` cached 4 MiB blocks): what a mount's random
reads ask of a block's owner. Two nodes run in the same run, taking turns: one on this
tree's code, one on ``--baseline`` (a source tree, put first on ``PYTHONPATH``; e.g. a
``git archive`` of the branch before the change), each in two modes:

- ``pagecache``: ``--memory-cache 0``, so a range is read from the block file's parts in
  the page cache and checked against the file's trailer;
- ``memory``: the default memory tier, the blocks read whole once (so each is kept as a
  verified copy), a range sent from that copy.

Driven by ``wrk`` (1 thread) at ``--conns`` connections: 1 is a single-job mount's
request latency, more its CPU per request under load. The node's CPU per request
(utime+stime of its process, from /proc) is the figure to compare; ratios are to the
baseline in the same mode and run. Each figure is the median over ``--rounds``.

Run it from the repository root::

    .venv/bin/python -m loadtest.bench_ranges --baseline /tmp/base-src

Results go to ``loadtest/results/ranges.json`` and ``loadtest/results/ranges.md``.
Every process it starts is stopped on exit, and its temp dir is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from clientlib.launcher import Process, start_etcd, start_node
from loadtest.bench_hot_blocks import environment, make_objects, run_wrk, warm

KiB = 1024
RANGE = 64 * KiB


def lua_script(path: Path, paths: list[str], nbytes: int) -> Path:
    """Random 64 KiB ranges at 4 KiB-aligned offsets of random blocks."""
    items = ",\n  ".join(json.dumps(p) for p in paths)
    slots = (nbytes - RANGE) // (4 * KiB)
    path.write_text(
        f"""local paths = {{
  {items}
}}
math.randomseed(os.time())
request = function()
  local start = math.random(0, {slots}) * 4096
  local hdrs = {{}}
  hdrs["Range"] = "bytes=" .. start .. "-" .. (start + {RANGE - 1})
  return wrk.format("GET", paths[math.random(1, #paths)], hdrs)
end
"""
    )
    return path


def who_answers(url: str, want: bytes) -> str:
    """Check that one range GET answers the right bytes; which path answered it (the
    fast path's answers carry no Server header)."""
    req = urllib.request.Request(url, headers={"Range": "bytes=4096-69631"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
        server = resp.headers.get("Server")
    if resp.status != 206 or body != want[4096:69632]:
        raise RuntimeError(f"wrong range answer from {url}: {resp.status}")
    return "aiohttp" if server else "fast path"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--baseline", type=Path, required=True, help="source tree of the baseline")
    p.add_argument("--blocks", type=int, default=16, help="cached 4 MiB blocks (16)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (5)")
    p.add_argument("--rounds", type=int, default=3, help="turns of every node (3)")
    p.add_argument("--conns", default="1,16", help="wrk connections, comma list (1,16)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default="ranges", help="results file stem (ranges)")
    args = p.parse_args(argv)
    conns = [int(c) for c in args.conns.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ringcache-bench-ranges-")).resolve()
    started: list[Process] = []
    runs: list[dict[str, Any]] = []
    try:
        etcd = start_etcd(tmp / "etcd")
        started.append(etcd)
        origin = tmp / "origin"
        objects = make_objects(origin, args.blocks)["4MiB"]
        big = objects[0][0].read_bytes()
        nodes: dict[tuple[str, str], tuple[Process, Path]] = {}
        for code in ("baseline", "this"):
            env = dict(os.environ)
            if code == "baseline":
                env["PYTHONPATH"] = str(args.baseline.resolve())
                env["PYTHONSAFEPATH"] = "1"  # else ``-m`` puts the cwd (this tree) first
            for mode in ("pagecache", "memory"):
                cache_dir = tmp / f"cache-{code}-{mode}"
                extra = ["--file-root", str(origin), "--log-level", "WARNING"]
                extra += ["--free-space-ratio", "0"]
                if mode == "pagecache":
                    extra += ["--memory-cache", "0"]
                node = start_node(
                    etcd.url, f"ranges-{code}-{mode}", cache_dir, size="2GiB", extra=extra, env=env
                )
                started.append(node)
                blocks = [warm(node.url, cache_dir, path, i) for path, i in objects]
                paths = [b.node_path for b in blocks]
                script = lua_script(tmp / f"{code}-{mode}.lua", paths, blocks[0].nbytes)
                want = big[blocks[0].nbytes :]
                path = who_answers(f"{node.url}{blocks[1].node_path}", want)
                print(f"{code}/{mode}: node {node.url}, ranges answered by the {path}", flush=True)
                nodes[code, mode] = (node, script)
        for rnd in range(args.rounds):
            for (code, mode), (node, script) in nodes.items():
                for c in conns:
                    r = run_wrk(node.url, script, 1, c, args.duration, [node.pid])
                    if r.non_2xx or any(r.errors.values()):
                        raise RuntimeError(f"{code}/{mode}/c{c}: {r.non_2xx} non-2xx, {r.errors}")
                    row = {
                        "round": rnd,
                        "code": code,
                        "mode": mode,
                        "conns": c,
                        "requests_per_s": r.requests_per_s,
                        "server_cpu_us_per_request": 1e6 * r.server_cpu_s / max(1, r.requests),
                        "p50_ms": r.latency_ms.get("p50"),
                        "p99_ms": r.latency_ms.get("p99"),
                        "other_cpu_s": r.other_cpu_s,
                    }
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for (code, mode), _ in nodes.items():
        for c in conns:
            mine = [r for r in runs if r["code"] == code and r["mode"] == mode and r["conns"] == c]
            rows.append(
                {
                    "code": code,
                    "mode": mode,
                    "conns": c,
                    **{
                        k: statistics.median(r[k] for r in mine)
                        for k in ("requests_per_s", "server_cpu_us_per_request", "p50_ms", "p99_ms")
                    },
                    "cpu_us_range": [
                        min(r["server_cpu_us_per_request"] for r in mine),
                        max(r["server_cpu_us_per_request"] for r in mine),
                    ],
                }
            )
    base = {(r["mode"], r["conns"]): r for r in rows if r["code"] == "baseline"}
    load = os.getloadavg()
    lines = [
        "# 64 KiB range GETs of cached 4 MiB blocks: this tree vs a baseline "
        "(`loadtest/bench_ranges.py`)",
        "",
        f"{args.rounds} rounds of {args.duration:g} s per node and connection count, medians "
        f"(CPU us/req range over the rounds in brackets); load average at the end "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on {os.cpu_count()} CPUs.",
        "",
        "| code | mode | conns | req/s | node CPU us/req (range) | p50 ms | p99 ms | "
        "req/s vs baseline | CPU/req vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["mode"], r["conns"]]
        lines.append(
            f"| {r['code']} | {r['mode']} | {r['conns']} | {r['requests_per_s']:,.0f} | "
            f"{r['server_cpu_us_per_request']:.0f} ({r['cpu_us_range'][0]:.0f}-"
            f"{r['cpu_us_range'][1]:.0f}) | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['requests_per_s'] / b['requests_per_s']:.2f}x | "
            f"{r['server_cpu_us_per_request'] / b['server_cpu_us_per_request']:.2f}x |"
        )
    doc = {
        "what": "64 KiB range GETs of cached 4 MiB blocks, this tree vs a baseline",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_at_end": load,
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment(),
        "rows": rows,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
