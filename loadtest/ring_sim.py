#!/usr/bin/env python3
"""The consistent-hash ring at 10, 100 and 1000 nodes: movement, balance, speed, weights.

No servers: every ring here is a ``clientlib.ring.Ring``, the class clients and nodes use,
built from ``NodeInfo`` records like the ones nodes put in etcd. What it measures:

- **movement** on a join and on a leave: the fraction of block ids whose primary owner
  changes, against the ideal 1/N (the joiner's or leaver's fair share); ratio 1.0 is
  ideal, the issue's target is <= 1.1. Also whether any id moved between two nodes that
  did not change (consistent hashing promises none).
- **balance** (max/mean load) with the ring's current ``VNODES``, and a sweep over the
  virtual node count: max/mean over ``--keys`` random 32-hex block ids, and the ring's
  own imbalance, the exact share of the hash space each node owns (what max/mean tends
  to with many blocks; a sample of K ids adds Poisson noise on top, shown as the
  "perfect ring" floor). Target: max/mean <= 1.1 at 100 nodes.
- **build time** of a 1000-node ring per vnodes count, and what md5 point hashing (the
  ring hashed with md5 before; now xxh3_64) would cost of it, against xxh3-128.
- **hot-key spread**: with a block flagged hot, how many distinct nodes serve 48 readers
  that each pick through ``Ring.read_order`` (a random one of the first ``replicas``
  owners first, as a client orders them), and the busiest node's share of those reads.
- **lookup speed**: ``Ring.owners(id, 2)`` per second, and the client's CPU microseconds
  per block (block id hash + owner lookup), against a plain bisect over the same points.
- **heterogeneous weights**: clusters with weights 1, 2 and 4: each node's share of ids
  against its share of the weight, and movement when a heavy node joins.

The bulk of the ids are placed with a bisect over the ring's own sorted points and hash
function (``Ring.owners`` copies the tail of the point list on every call, which makes
200k lookups on a 1000-node ring take minutes); a sample is checked against
``Ring.owners`` on every ring, and the run stops if one id disagrees.

    .venv/bin/python -m loadtest.ring_sim [--keys 200000] [--trials 5] [--quick]

Results: ``loadtest/results/ring_sim.json``, ``ring_sim.md``, ``ring_movement.png`` and
``ring_load.png``.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import xxhash

from clientlib.blocks import DEFAULT_BLOCK_SIZE, block_id
from clientlib.cluster import DEFAULT_REPLICAS, NodeInfo
from clientlib.ring import VNODES, Ring

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10, 100, 1000)
SWEEP = (40, 80, 160, 320, 640, 960, 1280)
#: Finer grid searched at 100 nodes for the smallest count that meets the target.
SEARCH = (160, 240, 320, 400, 480, 560, 640, 720, 800, 880, 960, 1120, 1280)
TARGET_MOVEMENT = 1.1
TARGET_MAX_MEAN = 1.1
HOT_READERS = 48
#: Owners a client tries per block (``CacheClient``'s default ``owners_to_try``).
OWNERS_TO_TRY = 2
SPACE = 1 << 64  # the ring hashes points and keys to 64-bit ints (xxh3_64)


# -- building rings -----------------------------------------------------------------


def make_nodes(count: int, seed: int, weights: Sequence[float] = (1.0,)) -> list[NodeInfo]:
    """``count`` node records with ids shaped like real ones (``<host>-<8 hex>``)."""
    rng = random.Random(seed)
    return [
        NodeInfo(
            id=f"cache{i:04d}-{rng.getrandbits(32):08x}",
            addr=f"10.{i // 250}.{i % 250}.{seed % 250}:7070",
            weight=weights[i % len(weights)],
            capacity_bytes=int(weights[i % len(weights)] * (1 << 40)),
        )
        for i in range(count)
    ]


def block_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


class Placement:
    """Where ids land on one ``Ring``: same points, same hash, without the list copy."""

    def __init__(self, ring: Ring) -> None:
        points = ring.points()
        assert points
        self.ring = ring
        self.points: list[int] = [position for position, _ in points]
        self.point_owner: dict[int, str] = dict(points)
        self.hashi: Callable[[str], int] = Ring.position

    def owners(self, key_hash: int, count: int = 1) -> list[str]:
        points, owner = self.points, self.point_owner
        pos = bisect.bisect(points, key_hash)
        found: list[str] = []
        for step in range(len(points)):
            name = owner[points[(pos + step) % len(points)]]
            if name not in found:
                found.append(name)
                if len(found) == count:
                    break
        return found

    def primaries(self, key_hashes: Sequence[int]) -> list[str]:
        points, owner, n = self.points, self.point_owner, len(self.points)
        out = []
        for h in key_hashes:
            pos = bisect.bisect(points, h)
            out.append(owner[points[pos if pos < n else 0]])
        return out

    def arc_shares(self) -> dict[str, float]:
        """Exact fraction of the hash space each node owns (ids hashing into its arcs)."""
        shares: Counter[str] = Counter()
        points, owner = self.points, self.point_owner
        # An id lands on the first point strictly after its hash: point p owns [prev, p).
        previous = points[-1] - SPACE
        for p in points:
            shares[owner[p]] += p - previous
            previous = p
        return {name: share / SPACE for name, share in shares.items()}

    def check(self, keys: Sequence[str], key_hashes: Sequence[int], count: int = 2) -> None:
        """Stop the run if the bisect disagrees with ``Ring.owners`` on any sampled id."""
        for key, h in zip(keys, key_hashes, strict=True):
            want = [n.id for n in self.ring.owners(key, count)]
            got = self.owners(h, count)
            if want != got:
                raise SystemExit(f"placement disagrees with Ring.owners on {key}: {got} {want}")


def max_over_mean(loads: Sequence[float]) -> float:
    return max(loads) / statistics.fmean(loads)


def key_loads(place: Placement, key_hashes: Sequence[int], nodes: Sequence[NodeInfo]) -> list[int]:
    counts = Counter(place.primaries(key_hashes))
    return [counts.get(n.id, 0) for n in nodes]


def build(nodes: Sequence[NodeInfo], vnodes: int = VNODES) -> tuple[Ring, float]:
    """The ring and the CPU seconds its build took (CPU time: other load on a shared
    machine does not inflate it, as it does wall time)."""
    started = time.process_time()
    ring = Ring(nodes, vnodes=vnodes)
    return ring, time.process_time() - started


# -- the measurements ------------------------------------------------------------------


def movement(n: int, trials: int, keys: list[str], hashes: list[int]) -> dict[str, Any]:
    """Fraction of ids whose primary changes on one join / one leave, over ``trials``."""
    rows: dict[str, list[dict[str, float]]] = {"join": [], "leave": []}
    sample = min(500, len(keys))
    for trial in range(trials):
        nodes = make_nodes(n + 1, seed=1000 * n + trial)
        base_nodes, joiner = nodes[:n], nodes[n]
        base, _ = build(base_nodes)
        joined, _ = build(nodes)
        leaver = base_nodes[random.Random(trial).randrange(n)]
        left, _ = build([x for x in base_nodes if x.id != leaver.id])
        p_base, p_join, p_left = Placement(base), Placement(joined), Placement(left)
        for place in (p_base, p_join, p_left):
            place.check(keys[:sample], hashes[:sample])
        before = p_base.primaries(hashes)
        for kind, place, node, ideal, arc_share in (
            ("join", p_join, joiner, 1 / (n + 1), p_join.arc_shares()[joiner.id]),
            ("leave", p_left, leaver, 1 / n, p_base.arc_shares()[leaver.id]),
        ):
            after = place.primaries(hashes)
            moved = sum(a != b for a, b in zip(before, after, strict=True))
            # Ids that moved between two nodes neither of which joined or left.
            stray = sum(
                a != b and node.id not in (a, b) for a, b in zip(before, after, strict=True)
            )
            rows[kind].append(
                {
                    "moved_fraction": moved / len(hashes),
                    "ratio_to_ideal": moved / len(hashes) / ideal,
                    "exact_ratio_to_ideal": arc_share / ideal,
                    "moved_between_unchanged_nodes": stray,
                }
            )
    out: dict[str, Any] = {"nodes": n, "trials": trials}
    for kind, trial_rows in rows.items():
        ratios = [r["ratio_to_ideal"] for r in trial_rows]
        exact = [r["exact_ratio_to_ideal"] for r in trial_rows]
        out[kind] = {
            "ideal_fraction": 1 / (n + 1) if kind == "join" else 1 / n,
            "moved_fraction_mean": statistics.fmean(r["moved_fraction"] for r in trial_rows),
            "ratio_mean": statistics.fmean(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "exact_ratio_mean": statistics.fmean(exact),
            "exact_ratio_min": min(exact),
            "exact_ratio_max": max(exact),
            "moved_between_unchanged_nodes": sum(
                r["moved_between_unchanged_nodes"] for r in trial_rows
            ),
        }
    return out


def perfect_floor(n: int, k: int, trials: int) -> float:
    """max/mean of ``k`` ids thrown uniformly at ``n`` nodes: the sampling noise alone."""
    values = []
    for trial in range(trials):
        rng = random.Random(77 + trial)
        counts = Counter(rng.randrange(n) for _ in range(k))
        values.append(max_over_mean([counts.get(i, 0) for i in range(n)]))
    return statistics.fmean(values)


def balance(
    n: int, vnodes: int, trials: int, keys: list[str], hashes: list[int], with_keys: bool = True
) -> dict[str, Any]:
    arc, sampled, builds = [], [], []
    for trial in range(trials):
        nodes = make_nodes(n, seed=500_000 + 1000 * n + trial)
        ring, seconds = build(nodes, vnodes)
        builds.append(seconds)
        place = Placement(ring)
        place.check(keys[:200], hashes[:200])
        shares = place.arc_shares()
        arc.append(max_over_mean([shares.get(x.id, 0.0) for x in nodes]))
        if with_keys:
            sampled.append(max_over_mean(key_loads(place, hashes, nodes)))
    row: dict[str, Any] = {
        "nodes": n,
        "vnodes": vnodes,
        "trials": trials,
        "exact_max_mean": statistics.fmean(arc),
        "exact_max_mean_worst": max(arc),
        "build_seconds": statistics.fmean(builds),
    }
    if with_keys:
        row["keys_max_mean"] = statistics.fmean(sampled)
        row["keys_max_mean_worst"] = max(sampled)
    return row


def build_breakdown(n: int, vnodes: int) -> dict[str, Any]:
    """Build time of an ``n``-node ring, and its md5 point hashing against xxh3-128."""
    nodes = make_nodes(n, seed=42)
    ring, seconds = build(nodes, vnodes)
    names = [f"{x.id}-{k}" for x in nodes for k in range(vnodes)]
    started = time.process_time()
    md5_points = [int(hashlib.md5(name.encode("utf-8")).hexdigest(), 16) for name in names]
    md5_seconds = time.process_time() - started
    started = time.process_time()
    sorted(md5_points)
    sort_seconds = time.process_time() - started
    started = time.process_time()
    [xxhash.xxh3_128_intdigest(name.encode("utf-8")) for name in names]
    xxh_seconds = time.process_time() - started
    return {
        "nodes": n,
        "vnodes": vnodes,
        "points": len(ring.points()),
        "build_seconds": seconds,
        "md5_hashing_seconds": md5_seconds,
        "md5_share_of_build": md5_seconds / seconds,
        "sort_seconds": sort_seconds,
        "xxh3_128_hashing_seconds": xxh_seconds,
    }


def timed_calls(fn: Callable[[int], object], budget: float, batch: int) -> tuple[float, float]:
    """(calls per CPU second, CPU microseconds per call) of ``fn(i)`` for ~``budget`` s.

    CPU time, not wall time: tests or other benchmarks sharing the machine's cores would
    otherwise slow the figures down by whatever share of a core they take."""
    calls = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < budget:
        batch_started = time.perf_counter()
        for i in range(calls, calls + batch):
            fn(i)
        calls += batch
        if time.perf_counter() - batch_started > budget / 10:
            batch = max(1, batch // 4)  # slow calls: check the clock more often
    cpu = time.process_time() - cpu0
    return calls / cpu, cpu / calls * 1e6


def lookup_speed(n: int, vnodes: int, keys: list[str], budget: float) -> dict[str, Any]:
    ring, _ = build(make_nodes(n, seed=7), vnodes)
    place = Placement(ring)
    size = len(keys)
    # Ring.owners on random ids, as the client calls it (count 2: primary and fallback).
    rate, _ = timed_calls(lambda i: ring.owners(keys[i % size], 2), budget, 200)
    # What a client spends per block: the block id (BLAKE2b) and the owner lookup.
    version = "262144-1700000000000000000"

    def per_block(i: int) -> None:
        bid = block_id("s3://bucket", f"bars/{i % 5000}.parquet", version, DEFAULT_BLOCK_SIZE, i)
        ring.owners(bid, 2)

    _, client_cpu = timed_calls(per_block, budget, 200)
    _, id_cpu = timed_calls(
        lambda i: block_id("s3://bucket", f"bars/{i}.parquet", version, DEFAULT_BLOCK_SIZE, i),
        budget / 2,
        1000,
    )
    hashi = place.hashi
    bisect_rate, bisect_cpu = timed_calls(
        lambda i: place.owners(hashi(keys[i % size]), 2), budget, 1000
    )
    return {
        "nodes": n,
        "vnodes": vnodes,
        "ring_owners2_per_second": rate,
        "ring_owners2_us": 1e6 / rate,
        "client_cpu_us_per_block": client_cpu,
        "block_id_cpu_us": id_cpu,
        "bisect_owners2_per_second": bisect_rate,
        "bisect_owners2_us": bisect_cpu,
    }


def hot_spread(n: int, blocks: int) -> dict[str, Any]:
    """Readers of a hot block through ``Ring.read_order`` (what a client tries first),
    per replicas."""
    ring, _ = build(make_nodes(n, seed=11))
    rng = random.Random(5)
    hot = [f"{rng.getrandbits(128):032x}" for _ in range(blocks)]
    rows = []
    for replicas in (1, 2, DEFAULT_REPLICAS, 5):

        def first(bid: str, hot: bool, replicas: int = replicas) -> str:
            return ring.read_order(bid, OWNERS_TO_TRY, replicas=replicas, hot=hot)[0].id

        distinct, busiest, cold_distinct = [], [], []
        for bid in hot:
            cold_distinct.append(len({first(bid, False) for _ in range(4)}))
            # hot=True: what a node's X-Ringcache-Hot answer makes the client set
            picks = Counter(first(bid, True) for _ in range(HOT_READERS))
            distinct.append(len(picks))
            busiest.append(max(picks.values()) / HOT_READERS)
        rows.append(
            {
                "replicas": replicas,
                "distinct_nodes_mean": statistics.fmean(distinct),
                "distinct_nodes_min": min(distinct),
                "busiest_node_share_mean": statistics.fmean(busiest),
                "busiest_node_share_max": max(busiest),
                "distinct_nodes_before_flagged_hot": statistics.fmean(cold_distinct),
            }
        )
    return {"nodes": n, "readers": HOT_READERS, "hot_blocks": blocks, "by_replicas": rows}


def heterogeneous(n: int, hashes: list[int]) -> dict[str, Any]:
    weights = (1.0, 2.0, 4.0)
    nodes = make_nodes(n, seed=900 + n, weights=weights)
    ring, _ = build(nodes)
    place = Placement(ring)
    shares = place.arc_shares()
    loads = key_loads(place, hashes, nodes)
    total_w = sum(x.weight for x in nodes)
    per_node = [
        {
            "id": x.id,
            "weight": x.weight,
            "points": sum(1 for _, owner in ring.points() if owner == x.id),
            "weight_share": x.weight / total_w,
            "key_share": load / len(hashes),
            "exact_share": shares.get(x.id, 0.0),
        }
        for x, load in zip(nodes, loads, strict=True)
    ]
    by_weight = []
    for w in weights:
        group = [r for r in per_node if r["weight"] == w]
        ratios = [r["exact_share"] / r["weight_share"] for r in group]
        by_weight.append(
            {
                "weight": w,
                "nodes": len(group),
                "weight_share": sum(r["weight_share"] for r in group),
                "key_share": sum(r["key_share"] for r in group),
                "exact_share": sum(r["exact_share"] for r in group),
                "share_over_weight_share_min": min(ratios),
                "share_over_weight_share_max": max(ratios),
            }
        )
    # A weight-4 node joins: ideal movement is its weight share of the new total.
    joiner = NodeInfo(id="cache9999-feedbeef", addr="10.9.9.9:7070", weight=4.0, capacity_bytes=0)
    joined = Placement(build([*nodes, joiner])[0])
    before, after = place.primaries(hashes), joined.primaries(hashes)
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(hashes)
    stray = sum(a != b and joiner.id not in (a, b) for a, b in zip(before, after, strict=True))
    ideal = 4.0 / (total_w + 4.0)
    return {
        "nodes": n,
        "weights": list(weights),
        "per_node": per_node if n <= 12 else None,
        "by_weight": by_weight,
        "join_weight4": {
            "moved_fraction": moved,
            "ideal_fraction": ideal,
            "ratio_to_ideal": moved / ideal,
            "moved_between_unchanged_nodes_fraction": stray / len(hashes),
        },
    }


# -- report ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200_000, help="random block ids placed")
    parser.add_argument("--trials", type=int, default=5, help="node-id sets per measurement")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="fewer keys, trials and sweeps")
    parser.add_argument(
        "--replot", action="store_true", help="only redo the .md and PNGs from ring_sim.json"
    )
    args = parser.parse_args()
    if args.replot:
        result = json.loads((RESULTS / "ring_sim.json").read_text())
        (RESULTS / "ring_sim.md").write_text(markdown(result))
        plots(result)
        return
    if args.quick:
        args.keys, args.trials = 20_000, 2
    started = time.perf_counter()
    keys = block_ids(args.keys, args.seed)
    hashes = [Ring.position(k) for k in keys]
    log = lambda what, row: print(what, json.dumps(row, default=round), flush=True)  # noqa: E731

    result: dict[str, Any] = {
        "vnodes_current": VNODES,
        "keys": args.keys,
        "trials": args.trials,
        "seed": args.seed,
        "targets": {"movement_ratio": TARGET_MOVEMENT, "max_mean_at_100": TARGET_MAX_MEAN},
    }
    result["movement"] = [movement(n, args.trials, keys, hashes) for n in SIZES]
    for row in result["movement"]:
        log("movement", row)

    result["balance_current"] = []
    for n in SIZES:
        row = balance(n, VNODES, args.trials if n < 1000 else 2, keys, hashes)
        row["perfect_ring_floor"] = perfect_floor(n, args.keys, 3)
        result["balance_current"].append(row)
        log("balance", row)

    result["sweep"] = []
    for vnodes in SWEEP if not args.quick else (40, 160, 640):
        at100 = balance(100, vnodes, args.trials, keys, hashes)
        at1000 = balance(1000, vnodes, 1, keys, hashes)
        breakdown = build_breakdown(1000, vnodes)
        movement100 = movement_exact(100, vnodes, args.trials)
        speed = lookup_speed(1000, vnodes, keys, 0.5 if args.quick else 1.5)
        row = {
            "vnodes": vnodes,
            "at_100": at100,
            "at_1000": at1000,
            "build_1000": breakdown,
            "movement_100": movement100,
            "lookup_1000": speed,
        }
        result["sweep"].append(row)
        log("sweep", row)

    search = []
    trials = max(args.trials, 8) if not args.quick else 2
    for vnodes in SEARCH if not args.quick else (320, 640, 960):
        row = balance(100, vnodes, trials, keys, hashes, with_keys=False)
        search.append(row)
        log("search", row)
    result["search_100"] = search
    meets = [r["vnodes"] for r in search if r["exact_max_mean"] <= TARGET_MAX_MEAN]
    meets_worst = [r["vnodes"] for r in search if r["exact_max_mean_worst"] <= TARGET_MAX_MEAN]
    result["smallest_vnodes_meeting_target"] = {
        "mean_over_trials": min(meets) if meets else None,
        "every_trial": min(meets_worst) if meets_worst else None,
        "criterion": "exact max/mean hash-space share at 100 nodes <= 1.1",
    }
    recommended = result["smallest_vnodes_meeting_target"]["mean_over_trials"]
    if recommended:
        result["recommended"] = {
            "vnodes": recommended,
            "balance_100": balance(100, recommended, args.trials, keys, hashes),
            "build_1000": build_breakdown(1000, recommended),
            "lookup_1000": lookup_speed(1000, recommended, keys, 1.5),
        }
        log("recommended", result["recommended"])

    result["lookups"] = [lookup_speed(n, VNODES, keys, 0.5 if args.quick else 1.5) for n in SIZES]
    for row in result["lookups"]:
        log("lookup", row)
    # Ring.owners costs ~0.7 ms at 1000 nodes: fewer hot blocks there keep this short.
    result["hot_spread"] = [hot_spread(n, 100 if args.quick or n >= 1000 else 1000) for n in SIZES]
    for row in result["hot_spread"]:
        log("hot", row)
    result["heterogeneous"] = [heterogeneous(n, hashes) for n in (3, 99)]
    for row in result["heterogeneous"]:
        log("weights", row)

    result["seconds"] = round(time.perf_counter() - started, 1)
    result["python"] = sys.version.split()[0]
    result["machine"] = platform.machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ring_sim.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ring_sim.md").write_text(markdown(result))
    plots(result)
    print(markdown(result))


def movement_exact(n: int, vnodes: int, trials: int) -> dict[str, float]:
    """Join and leave movement ratios at ``n`` nodes from exact arc shares (no id sample)."""
    join, leave = [], []
    for trial in range(trials):
        nodes = make_nodes(n + 1, seed=2000 * n + trial)
        base = Placement(build(nodes[:n], vnodes)[0]).arc_shares()
        joined = Placement(build(nodes, vnodes)[0]).arc_shares()
        join.append(joined[nodes[n].id] * (n + 1))
        leave.append(base[nodes[trial % n].id] * n)
    return {
        "join_ratio_mean": statistics.fmean(join),
        "join_ratio_min": min(join),
        "join_ratio_max": max(join),
        "leave_ratio_mean": statistics.fmean(leave),
        "leave_ratio_min": min(leave),
        "leave_ratio_max": max(leave),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# The consistent-hash ring at 10, 100 and 1000 nodes (simulation)",
        "",
        "`clientlib.ring.Ring` (uhashring, xxh3_64 points named `<id>-<k>`, bisect lookups), "
        "current "
        f"`VNODES` = {r['vnodes_current']}; {r['keys']:,} random 32-hex block ids; "
        f"{r['trials']} node-id sets per cell (mean; worst in brackets). Times are CPU time "
        "of one core (robust to other load on the machine). *Exact* = each "
        "node's share of the hash space (the ring's own imbalance, what many blocks tend "
        "to); *ids* = counted over the sampled ids (adds Poisson noise: see the perfect-ring "
        "floor). Produced by `loadtest/ring_sim.py`.",
        "",
        "## Key movement on one join / one leave (ratio to the ideal 1/N)",
        "",
        "| nodes | join: ids moved | join ratio (ids) | join ratio (exact) | leave ratio (ids) "
        "| leave ratio (exact) | ids moved between unchanged nodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in r["movement"]:
        j, lv = m["join"], m["leave"]
        lines.append(
            f"| {m['nodes']} | {j['moved_fraction_mean']:.2%} "
            f"| {j['ratio_mean']:.2f} [{j['ratio_max']:.2f}] "
            f"| {j['exact_ratio_mean']:.2f} [{j['exact_ratio_max']:.2f}] "
            f"| {lv['ratio_mean']:.2f} [{lv['ratio_max']:.2f}] "
            f"| {lv['exact_ratio_mean']:.2f} [{lv['exact_ratio_max']:.2f}] "
            f"| {j['moved_between_unchanged_nodes'] + lv['moved_between_unchanged_nodes']} |"
        )
    lines += [
        "",
        f"## Load balance with VNODES = {r['vnodes_current']} (max/mean)",
        "",
        "| nodes | exact | ids | perfect-ring floor for this many ids | ring build |",
        "|---|---|---|---|---|",
    ]
    for b in r["balance_current"]:
        lines.append(
            f"| {b['nodes']} | {b['exact_max_mean']:.3f} [{b['exact_max_mean_worst']:.3f}] "
            f"| {b['keys_max_mean']:.3f} [{b['keys_max_mean_worst']:.3f}] "
            f"| {b['perfect_ring_floor']:.3f} | {b['build_seconds'] * 1e3:.0f} ms |"
        )
    lines += [
        "",
        "## Sweep over virtual nodes per node",
        "",
        "| vnodes | max/mean @100 exact | max/mean @100 ids | max/mean @1000 exact "
        "| join / leave ratio @100 (exact, worst) | build @1000 | md5 share of build "
        "| xxh3 hashing @1000 | `Ring.owners(id,2)` @1000 | bisect @1000 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["sweep"]:
        a, b, bd, mv, lk = (
            s["at_100"],
            s["at_1000"],
            s["build_1000"],
            s["movement_100"],
            s["lookup_1000"],
        )
        lines.append(
            f"| {s['vnodes']} | {a['exact_max_mean']:.3f} [{a['exact_max_mean_worst']:.3f}] "
            f"| {a['keys_max_mean']:.3f} | {b['exact_max_mean']:.3f} "
            f"| {mv['join_ratio_max']:.2f} / {mv['leave_ratio_max']:.2f} "
            f"| {bd['build_seconds']:.2f} s | {bd['md5_share_of_build']:.0%} "
            f"| {bd['xxh3_128_hashing_seconds']:.2f} s "
            f"| {lk['ring_owners2_us']:.0f} µs | {lk['bisect_owners2_us']:.1f} µs |"
        )
    smallest = r["smallest_vnodes_meeting_target"]
    lines += [
        "",
        f"Finer search at 100 nodes ({max(r['trials'], 8)} node-id sets each): "
        + ", ".join(
            f"{x['vnodes']}: {x['exact_max_mean']:.3f} [{x['exact_max_mean_worst']:.3f}]"
            for x in r["search_100"]
        )
        + ".",
        "",
        f"Smallest vnodes with exact max/mean <= 1.1 at 100 nodes: "
        f"**{smallest['mean_over_trials']}** on average over node-id sets, "
        f"{smallest['every_trial']} in every set.",
    ]
    if "recommended" in r:
        rec = r["recommended"]
        lines.append(
            f"At {rec['vnodes']}: max/mean @100 exact {rec['balance_100']['exact_max_mean']:.3f}"
            f", ids {rec['balance_100']['keys_max_mean']:.3f}; 1000-node ring build "
            f"{rec['build_1000']['build_seconds']:.2f} s "
            f"({rec['build_1000']['md5_share_of_build']:.0%} md5); `Ring.owners(id, 2)` at "
            f"1000 nodes {rec['lookup_1000']['ring_owners2_us']:.0f} µs, a bisect over the "
            f"same points {rec['lookup_1000']['bisect_owners2_us']:.1f} µs."
        )
    lines += [
        "",
        f"## Lookup speed with VNODES = {r['vnodes_current']}",
        "",
        "| nodes | `Ring.owners(id, 2)` per CPU second | CPU µs each "
        "| client CPU µs per block (id + owners) | of which block id "
        "| bisect over the same points per CPU second |",
        "|---|---|---|---|---|---|",
    ]
    for lk in r["lookups"]:
        lines.append(
            f"| {lk['nodes']} | {lk['ring_owners2_per_second']:,.0f} "
            f"| {lk['ring_owners2_us']:.1f} | {lk['client_cpu_us_per_block']:.1f} "
            f"| {lk['block_id_cpu_us']:.1f} | {lk['bisect_owners2_per_second']:,.0f} |"
        )
    lines += [
        "",
        f"## Hot-key spread ({HOT_READERS} readers of one hot block, `Ring.read_order`)",
        "",
        "| nodes | replicas | distinct serving nodes (mean, min) | busiest node's share "
        "(mean, worst) | before the block is flagged hot |",
        "|---|---|---|---|---|",
    ]
    for h in r["hot_spread"]:
        for x in h["by_replicas"]:
            lines.append(
                f"| {h['nodes']} | {x['replicas']} | {x['distinct_nodes_mean']:.2f}, "
                f"{x['distinct_nodes_min']} | {x['busiest_node_share_mean']:.0%}, "
                f"{x['busiest_node_share_max']:.0%} "
                f"| {x['distinct_nodes_before_flagged_hot']:.0f} node |"
            )
    lines += [
        "",
        "## Heterogeneous weights 1, 2, 4",
        "",
        "| nodes | weight | nodes of it | weight share | id share | exact share "
        "| per-node share / weight share (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in r["heterogeneous"]:
        for g in h["by_weight"]:
            lines.append(
                f"| {h['nodes']} | {g['weight']:.0f} | {g['nodes']} | {g['weight_share']:.1%} "
                f"| {g['key_share']:.1%} | {g['exact_share']:.1%} "
                f"| {g['share_over_weight_share_min']:.2f}-{g['share_over_weight_share_max']:.2f} |"
            )
    for h in r["heterogeneous"]:
        j = h["join_weight4"]
        lines.append("")
        lines.append(
            f"{h['nodes']} nodes + one of weight 4: {j['moved_fraction']:.2%} of ids moved, "
            f"ideal {j['ideal_fraction']:.2%} (ratio {j['ratio_to_ideal']:.2f}); "
            f"{j['moved_between_unchanged_nodes_fraction']:.2%} moved between old nodes "
            "(every node's point count is scaled by the mean weight, which the joiner changes)."
        )
    lines += ["", f"Run time {r['seconds']} s, Python {r['python']} on {r['machine']}."]
    return "\n".join(lines) + "\n"


def plots(r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Movement: ratio to ideal per cluster size, and against vnodes at 100 nodes.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    sizes = [m["nodes"] for m in r["movement"]]
    x = range(len(sizes))
    for offset, kind, color in ((-0.2, "join", "tab:blue"), (0.2, "leave", "tab:orange")):
        means = [m[kind]["ratio_mean"] for m in r["movement"]]
        lows = [m[kind]["ratio_mean"] - m[kind]["ratio_min"] for m in r["movement"]]
        highs = [m[kind]["ratio_max"] - m[kind]["ratio_mean"] for m in r["movement"]]
        ax1.bar(
            [i + offset for i in x],
            means,
            0.4,
            yerr=[lows, highs],
            capsize=4,
            color=color,
            label=f"{kind} (ids; bars = min-max over node-id sets)",
        )
    ax1.axhline(1.0, color="black", lw=1, label="ideal (1/N)")
    ax1.axhline(TARGET_MOVEMENT, color="red", ls="--", lw=1, label="target 1.1x")
    ax1.set_xticks(list(x), [f"{n} nodes" for n in sizes])
    ax1.set_ylabel("ids moved / ideal")
    ax1.set_title(f"Key movement on one join / leave (VNODES={r['vnodes_current']})")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_ylim(0, max(1.6, ax1.get_ylim()[1]))
    vn = [s["vnodes"] for s in r["sweep"]]
    for kind, marker, color in (("join", "o", "tab:blue"), ("leave", "s", "tab:orange")):
        mv = [s["movement_100"] for s in r["sweep"]]
        mean = [m[f"{kind}_ratio_mean"] for m in mv]
        high = [m[f"{kind}_ratio_max"] for m in mv]
        low = [m.get(f"{kind}_ratio_min", m[f"{kind}_ratio_mean"]) for m in mv]
        ax2.plot(vn, mean, marker + "-", color=color, label=f"{kind}, mean")
        ax2.fill_between(vn, low, high, color=color, alpha=0.2, label=f"{kind}, min-max")
    ax2.axhline(1.0, color="black", lw=1)
    ax2.axhline(TARGET_MOVEMENT, color="red", ls="--", lw=1, label="target 1.1x")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(vn, [str(v) for v in vn])
    ax2.set_xlabel("virtual nodes per node")
    ax2.set_ylabel("moved / ideal (exact shares)")
    ax2.set_title("Movement vs vnodes at 100 nodes")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "ring_movement.png", dpi=110)
    plt.close(fig)

    # Load: max/mean vs vnodes; build and lookup time at 1000 nodes; weights.
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    ax.plot(vn, [s["at_100"]["exact_max_mean"] for s in r["sweep"]], "o-", label="100 nodes, exact")
    ax.plot(vn, [s["at_100"]["keys_max_mean"] for s in r["sweep"]], "o:", label="100 nodes, ids")
    ax.plot(
        vn, [s["at_1000"]["exact_max_mean"] for s in r["sweep"]], "s-", label="1000 nodes, exact"
    )
    ax.plot(vn, [s["at_1000"]["keys_max_mean"] for s in r["sweep"]], "s:", label="1000 nodes, ids")
    ax.axhline(TARGET_MAX_MEAN, color="red", ls="--", lw=1, label="target 1.1 @100")
    ax.axvline(r["vnodes_current"], color="grey", lw=1, label=f"VNODES={r['vnodes_current']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(vn, [str(v) for v in vn])
    ax.set_xlabel("virtual nodes per node")
    ax.set_ylabel("max / mean load")
    ax.set_title(f"Load balance ({r['keys']:,} ids; exact = hash-space share)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    ax.plot(vn, [s["build_1000"]["build_seconds"] for s in r["sweep"]], "o-", label="Ring build")
    ax.plot(
        vn,
        [s["build_1000"]["md5_hashing_seconds"] for s in r["sweep"]],
        "o:",
        label="of which md5 point hashing",
    )
    ax.plot(
        vn,
        [s["build_1000"]["xxh3_128_hashing_seconds"] for s in r["sweep"]],
        "^:",
        label="xxh3-128 of the same names",
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(vn, [str(v) for v in vn])
    ax.set_xlabel("virtual nodes per node")
    ax.set_ylabel("CPU seconds")
    ax.set_title("1000-node ring: build time (blocks the event loop)")
    twin = ax.twinx()
    twin.plot(
        vn,
        [s["lookup_1000"]["ring_owners2_us"] for s in r["sweep"]],
        "d-",
        color="tab:red",
        label="Ring.owners(id,2) µs",
    )
    twin.set_ylabel("µs per lookup", color="tab:red")
    lines1, labels1 = ax.get_legend_handles_labels()
    lines2, labels2 = twin.get_legend_handles_labels()
    ax.legend(lines1 + lines2, labels1 + labels2, fontsize=8, loc="upper left")

    ax = axes[1][0]
    lk = r["lookups"]
    ax.bar(
        [f"{x['nodes']} nodes" for x in lk],
        [x["ring_owners2_per_second"] for x in lk],
        color="tab:blue",
        label="Ring.owners(id, 2)",
    )
    ax.plot(
        [f"{x['nodes']} nodes" for x in lk],
        [x["bisect_owners2_per_second"] for x in lk],
        "ko--",
        label="bisect over the same points",
    )
    ax.set_yscale("log")
    ax.set_ylabel("lookups per CPU second (one core)")
    ax.set_title(f"Lookup speed, VNODES={r['vnodes_current']}")
    for i, x in enumerate(lk):
        ax.annotate(
            f"{x['ring_owners2_per_second']:,.0f}/s",
            (i, x["ring_owners2_per_second"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.legend(fontsize=8)

    ax = axes[1][1]
    labels, weight_share, exact_share = [], [], []
    for h in r["heterogeneous"]:
        for g in h["by_weight"]:
            labels.append(f"{h['nodes']} nodes\nw={g['weight']:.0f}")
            weight_share.append(g["weight_share"])
            exact_share.append(g["key_share"])
    pos = range(len(labels))
    ax.bar([p - 0.2 for p in pos], weight_share, 0.4, label="share of weight")
    ax.bar([p + 0.2 for p in pos], exact_share, 0.4, label="share of ids")
    ax.set_xticks(list(pos), labels, fontsize=8)
    ax.set_ylabel("share of the cluster")
    ax.set_title("Heterogeneous weights 1, 2, 4 (per weight class)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "ring_load.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
