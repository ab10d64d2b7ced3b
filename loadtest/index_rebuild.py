"""How long a cache node takes to rebuild its index at start, and what the index costs.

Creates N empty block files with well-formed names (the rebuild reads names only, never
contents) in a temp dir, then times ``BlockStore.open()`` and measures the memory the index
keeps per block, for each eviction policy:

- ``open_seconds_*``: wall time of ``open()`` after a crash (no index snapshot: the
  index is rebuilt from the directory listings) with a warm dentry cache (files just
  created), best and median of ``--repeats`` runs, and the CPU time of the best run (the
  machine is shared, so wall time carries other programs' load; see ``load_average``);
- ``snapshot_open_seconds_*``: the same after a clean shutdown, when ``open()`` loads the
  index snapshot that ``close()`` saved (cachenode/indexsnapshot.py);
- ``bytes_per_block_tracemalloc``: memory still allocated after ``open()``, by tracemalloc
  (a second ``open()``, as tracing slows allocation down several times);
- ``bytes_per_block_rss``: growth of the process's resident set over the first timed
  ``open()`` (includes allocator slack and arenas kept from the parse).

Targets: open < 2 s and <= 200 bytes per block for 1M blocks. Results go to
``loadtest/results/index_rebuild.json`` and stdout. The temp dir is removed at the end.

    .venv/bin/python -m loadtest.index_rebuild [--blocks 1000000] [--policy s3fifo lru]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from cachenode.indexsnapshot import SNAPSHOT_NAME
from cachenode.store import BlockStore, CacheDirSpec, block_filename

RESULTS = Path(__file__).resolve().parent / "results" / "index_rebuild.json"
#: The smallest allowed block size: 1M of them fit on this machine's disk on paper, so
#: open() does not evict to match the disk's size.
BLOCK_SIZE = 64 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def create_blocks(root: Path, count: int, seed: int) -> float:
    """Lay out ``count`` empty block files the way the store names them; return seconds."""
    rng = random.Random(seed)
    started = time.perf_counter()
    for shard in range(256):
        (root / "blocks" / f"{shard:02x}").mkdir(parents=True, exist_ok=True)
    blocks = str(root / "blocks")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for _ in range(count):
        block_id = f"{rng.getrandbits(128):032x}"
        name = block_filename(block_id, BLOCK_SIZE, rng.getrandbits(64))
        os.close(os.open(f"{blocks}/{block_id[:2]}/{name}", flags, 0o644))
    return time.perf_counter() - started


def timed_open(
    spec: CacheDirSpec, count: int, policy: str, snapshot: bool
) -> tuple[float, float, int]:
    """Wall and CPU seconds of one ``open()``, and the growth of the resident set.

    ``snapshot``: open after a clean shutdown (the previous ``close()`` saved the index);
    else after a crash (no snapshot: the index is rebuilt from the listings).
    """
    if not snapshot:
        (spec.path / SNAPSHOT_NAME).unlink(missing_ok=True)
    elif not (spec.path / SNAPSHOT_NAME).exists():
        raise RuntimeError("no snapshot to time: the previous close() did not save one")
    gc.collect()
    rss_before = rss_bytes()
    store = BlockStore([spec], policy=policy)
    wall, cpu = time.perf_counter(), time.process_time()
    store.open()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss_growth = rss_bytes() - rss_before
    assert store.block_count == count, (store.block_count, count)
    store.close()
    del store
    gc.collect()
    return wall, cpu, rss_growth


def measure(root: Path, count: int, policy: str, repeats: int) -> dict[str, float | int | str]:
    spec = CacheDirSpec(root, count * BLOCK_SIZE * 2)
    walls, cpus, rss_growths = zip(
        *(timed_open(spec, count, policy, snapshot=False) for _ in range(repeats)), strict=True
    )
    # The last open's close() saved a snapshot; each timed open uses it and saves another.
    snapshot_walls = [timed_open(spec, count, policy, snapshot=True)[0] for _ in range(repeats)]

    store = BlockStore([spec], policy=policy)
    tracemalloc.start()
    store.open()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    store.close()
    del store
    gc.collect()
    best = min(walls)
    return {
        "policy": policy,
        "open_seconds_best": round(best, 3),
        "open_seconds_median": round(statistics.median(walls), 3),
        "open_seconds_all": [round(w, 3) for w in walls],
        "open_cpu_seconds_best": round(min(cpus), 3),
        "blocks_per_second": round(count / best),
        "bytes_per_block_tracemalloc": round(traced / count, 1),
        "bytes_per_block_rss": round(rss_growths[0] / count, 1),
        "snapshot_open_seconds_best": round(min(snapshot_walls), 3),
        "snapshot_open_seconds_all": [round(w, 3) for w in snapshot_walls],
        "meets_targets": {
            "after_crash_scan": best < 2.0 and traced / count <= 200,
            "after_clean_shutdown_snapshot": min(snapshot_walls) < 2.0 and traced / count <= 200,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--policy", nargs="+", default=["s3fifo", "lru"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed opens per policy")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ringcache-index-rebuild-", dir="/tmp"))
    try:
        create_seconds = create_blocks(tmp / "dir", args.blocks, args.seed)
        runs = [measure(tmp / "dir", args.blocks, policy, args.repeats) for policy in args.policy]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "blocks": args.blocks,
        "create_seconds": round(create_seconds, 1),
        "targets": {"open_seconds": 2.0, "bytes_per_block": 200},
        "dentry_cache": "warm (files just created)",
        "load_average_at_end": os.getloadavg()[0],
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
