"""Trace-driven comparison of the eviction policies: S3-FIFO vs LRU hit ratios.

No servers: each trace is replayed against the same policy classes the block store uses
(``cachenode.eviction``), inserting on a miss and evicting until the new block fits, as
``BlockStore.put`` does. Blocks are 4 MiB except the last block of each object, which is
shorter, so both policies are measured on bytes as they run in production.

Traces (fixed seeds, so every run replays the same requests):

- ``zipf-0.8`` / ``zipf-1.0``: block popularity follows Zipf with that exponent over the
  working set (many jobs on the same hot data, a long tail of cold blocks);
- ``zipf-1.0+scans``: the same, plus periodic sequential scans of a history range larger
  than the cache, read once per scan, interleaved with the Zipf requests (backtests
  re-reading years of bars while other jobs keep reading hot data).

Cache sizes are 10% and 20% of the working set's bytes. The first 10% of every trace
warms the cache and is not counted. Results: ``loadtest/results/eviction_sim.json`` and a
table in ``loadtest/results/eviction_sim.md``.

    .venv/bin/python -m loadtest.eviction_sim [--requests 1000000] [--blocks 100000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cachenode.eviction import EvictionPolicy, make_policy

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK_SIZE = 4 << 20
POLICIES = ("s3fifo", "lru")
CACHE_FRACTIONS = (0.10, 0.20)
WARMUP_FRACTION = 0.10


def block_sizes(count: int, rng: random.Random) -> list[int]:
    """Sizes of ``count`` blocks laid out as objects of 1-64 blocks; last blocks are short."""
    sizes: list[int] = []
    while len(sizes) < count:
        blocks = rng.randint(1, 64)
        sizes.extend([BLOCK_SIZE] * (blocks - 1))
        sizes.append(rng.randint(1, BLOCK_SIZE))
    return sizes[:count]


def zipf_requests(keys: list[int], alpha: float, count: int, rng: random.Random) -> Iterator[int]:
    """``count`` draws from ``keys`` where rank ``r`` has weight ``1 / r**alpha``.

    ``random.choices`` with cumulative weights bisects a table: exact Zipf, no numpy.
    """
    cumulative = list(itertools.accumulate(1.0 / rank**alpha for rank in range(1, len(keys) + 1)))
    chunk = 65536
    for start in range(0, count, chunk):
        yield from rng.choices(keys, cum_weights=cumulative, k=min(chunk, count - start))


def scan_trace(
    hot: list[int],
    history: list[int],
    count: int,
    every: int,
    rng: random.Random,
) -> Iterator[int]:
    """Zipf(1.0) over ``hot``; every ``every`` requests a scan of all of ``history`` begins,
    its reads interleaved one for one with the Zipf requests."""
    background = zipf_requests(hot, 1.0, count, rng)
    scan: Iterator[int] = iter(())
    for position in range(count):
        if position % every == 0:
            scan = iter(history)
        if position % 2 == 0:
            block = next(scan, None)
            if block is not None:
                yield block
                continue
        yield next(background)


def replay(policy: EvictionPolicy, trace: list[int], sizes: dict[int, int], capacity: int):
    """Hit ratio (requests and bytes) of ``policy`` on ``trace`` after the warm-up."""
    warmup = int(len(trace) * WARMUP_FRACTION)
    hits = requests = hit_bytes = request_bytes = 0
    for position, key in enumerate(trace):
        nbytes = sizes[key]
        hit = policy.touch(key)
        if not hit:
            while policy.nbytes + nbytes > capacity:
                policy.pop_victim()
            policy.insert(key, nbytes)
        if position >= warmup:
            requests += 1
            request_bytes += nbytes
            if hit:
                hits += 1
                hit_bytes += nbytes
    return hits / requests, hit_bytes / request_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=100_000, help="working set, in blocks")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    keys = [rng.getrandbits(128) for _ in range(args.blocks)]  # like block ids
    sizes = dict(zip(keys, block_sizes(args.blocks, rng), strict=True))
    # The scan trace splits the same working set: 60% read by Zipf, 40% scanned history.
    hot, history = keys[: args.blocks * 6 // 10], keys[args.blocks * 6 // 10 :]
    traces = {
        "zipf-0.8": list(zipf_requests(keys, 0.8, args.requests, random.Random(args.seed + 1))),
        "zipf-1.0": list(zipf_requests(keys, 1.0, args.requests, random.Random(args.seed + 2))),
        "zipf-1.0+scans": list(
            scan_trace(hot, history, args.requests, args.requests // 5, random.Random(args.seed))
        ),
    }
    working_set_bytes = sum(sizes.values())

    rows = []
    started = time.perf_counter()
    for trace_name, trace in traces.items():
        for fraction in CACHE_FRACTIONS:
            capacity = int(working_set_bytes * fraction)
            row: dict[str, object] = {"trace": trace_name, "cache_fraction": fraction}
            for policy_name in POLICIES:
                hit_ratio, byte_hit_ratio = replay(make_policy(policy_name), trace, sizes, capacity)
                row[policy_name] = {
                    "hit_ratio": round(hit_ratio, 4),
                    "byte_hit_ratio": round(byte_hit_ratio, 4),
                }
            s3, lru = row["s3fifo"]["hit_ratio"], row["lru"]["hit_ratio"]  # type: ignore[index]
            row["miss_ratio_reduction_vs_lru"] = round(1 - (1 - s3) / (1 - lru), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)

    result = {
        "requests_per_trace": args.requests,
        "working_set_blocks": args.blocks,
        "working_set_bytes": working_set_bytes,
        "block_size": BLOCK_SIZE,
        "warmup_fraction_not_counted": WARMUP_FRACTION,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eviction_sim.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "eviction_sim.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Eviction policies: S3-FIFO vs LRU (trace-driven simulation)",
        "",
        f"{result['requests_per_trace']:,} requests per trace over a working set of "
        f"{result['working_set_blocks']:,} blocks ({result['working_set_bytes'] / 2**30:.0f} "
        "GiB; 4 MiB blocks, shorter last blocks); the first 10% warms the cache and is not "
        "counted. Produced by `loadtest/eviction_sim.py` with the policy classes of "
        "`cachenode/eviction.py`.",
        "",
        "| trace | cache size | S3-FIFO hit ratio | LRU hit ratio | S3-FIFO byte hit ratio "
        "| LRU byte hit ratio | fewer misses than LRU |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        s3, lru = row["s3fifo"], row["lru"]
        lines.append(
            f"| {row['trace']} | {row['cache_fraction']:.0%} of working set "
            f"| {s3['hit_ratio']:.1%} | {lru['hit_ratio']:.1%} "
            f"| {s3['byte_hit_ratio']:.1%} | {lru['byte_hit_ratio']:.1%} "
            f"| {row['miss_ratio_reduction_vs_lru']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
