"""Soak of one mount: does mountd's memory level off under a long mixed workload?

A mount lives for days on a compute node, so its memory must be bounded by its options,
not grow with the bytes it has served. One ``mountd`` (default options) over 3 cache
nodes and a ``file://`` origin runs the same mixed pass again and again: sequential reads
of large files (a rotating subset, so the memory tier keeps evicting), random 64 KiB
reads, a directory of small files listed and read, and a file written, read back and
deleted. Every read is checked against the origin's bytes. After each pass the mount's
RSS is sampled from ``/proc``.

What it reports: RSS after each pass, the peak, and the growth from the end of the
first pass to the last one. mountd's own bound (docs/mount.md) is ``--memory-cache``
plus a few blocks per file read in sequence plus up to 128 MiB of freed block buffers
that glibc keeps; a leak shows as growth that goes on pass after pass.

Usage: ``.venv/bin/python -m loadtest.mount_soak [--passes 12] [--max-seconds 600]``
(needs root for FUSE and ``drop_caches``, and ``etcd`` on the PATH); writes
``loadtest/results/mount_soak.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from clientlib.launcher import start_etcd, start_mount, start_node
from loadtest import harness
from loadtest.bench_mount import drop_caches

MIB = 1024 * 1024
CLUSTER = "soak"
#: mountd's defaults, which the soak runs with (docs/mount.md).
MEMORY_CACHE_MIB = 256
PREFETCH = 8
#: Freed block buffers glibc may keep (mountd's M_TRIM_THRESHOLD).
GLIBC_KEEP_MIB = 128


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def read_whole(path: Path, want: bytes) -> None:
    """Read ``path`` in 1 MiB reads (as a data loader does) and check every byte."""
    got = bytearray()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(MIB):
            got += chunk
    if got != want:
        raise AssertionError(f"{path}: the mount's bytes differ from the origin's")


def one_pass(mnt: Path, origin: Path, big: list[str], rng: random.Random, n: int) -> None:
    """The mixed workload, once; a different half of the large files each pass."""
    drop_caches()
    for name in rng.sample(big, len(big) // 2):
        read_whole(mnt / name, (origin / name).read_bytes())
    name = rng.choice(big)
    want = (origin / name).read_bytes()
    with open(mnt / name, "rb", buffering=0) as fh:
        for _ in range(200):
            offset = rng.randrange(0, len(want) - 65536)
            if os.pread(fh.fileno(), 65536, offset) != want[offset : offset + 65536]:
                raise AssertionError(f"{name}: random read at {offset} differs")
    for small in sorted(os.listdir(mnt / "small")):
        if (mnt / "small" / small).read_bytes() != (origin / "small" / small).read_bytes():
            raise AssertionError(f"small/{small} differs")
    written = rng.randbytes(16 * MIB)
    out = mnt / f"out-{n}.bin"
    out.write_bytes(written)
    read_whole(out, written)
    out.unlink()


def soak(root: Path, procs: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    origin = root / "origin"
    (origin / "small").mkdir(parents=True)
    big = [f"big-{i}.bin" for i in range(args.files)]
    for name in big:
        (origin / name).write_bytes(rng.randbytes(args.file_mib * MIB))
    for i in range(100):
        (origin / "small" / f"s{i:03d}.csv").write_bytes(rng.randbytes(4096))
    etcd = start_etcd(root / "etcd")
    procs.append(etcd)
    nodes = [
        start_node(
            etcd.url,
            CLUSTER,
            root / f"node{i}",
            size="2GiB",
            extra=["--file-root", str(origin), "--log-level", "WARNING"],
        )
        for i in range(3)
    ]
    procs.append(nodes)
    mount = start_mount(
        f"file://{origin}", root / "mnt", etcd.url, CLUSTER, "--log-level", "WARNING"
    )
    procs.append(mount)
    samples: list[dict[str, float]] = [{"pass": 0, "rss_mib": round(rss_mib(mount.pid), 1)}]
    started = time.monotonic()
    for n in range(1, args.passes + 1):
        if time.monotonic() - started > args.max_seconds:
            print(f"stopping after {n - 1} passes: --max-seconds reached", file=sys.stderr)
            break
        begun = time.monotonic()
        one_pass(root / "mnt", origin, big, rng, n)
        sample = {
            "pass": n,
            "seconds": round(time.monotonic() - begun, 1),
            "rss_mib": round(rss_mib(mount.pid), 1),
        }
        samples.append(sample)
        print(f"pass {n}: {sample}", flush=True)
    rss = [s["rss_mib"] for s in samples[1:]]
    # docs/mount.md: the memory tier, (prefetch + 2) blocks per stream, 128 MiB of freed
    # buffers glibc may keep; on top of what the process had before its first read.
    bound = samples[0]["rss_mib"] + MEMORY_CACHE_MIB + (PREFETCH + 2) * 4 + GLIBC_KEEP_MIB
    return {
        "passes": len(rss),
        "files": args.files,
        "file_mib": args.file_mib,
        "mountd_options": "defaults (--memory-cache 256MiB, --prefetch-blocks 8)",
        "samples": samples,
        "rss_after_first_pass_mib": rss[0],
        "rss_peak_mib": max(rss),
        "rss_last_mib": rss[-1],
        "growth_first_to_last_mib": round(rss[-1] - rss[0], 1),
        "growth_second_half_mib": round(rss[-1] - rss[len(rss) // 2], 1),
        "documented_bound_mib": round(bound, 1),
        "load_avg": harness.load_avg(),
        **harness.machine_info(),
    }


def markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {s['pass']} | {s.get('seconds', '')} | {s['rss_mib']} |" for s in r["samples"]
    )
    return f"""# mountd soak: RSS over {r["passes"]} mixed passes

`python -m loadtest.mount_soak`: one mount ({r["mountd_options"]}), 3 cache nodes, a
`file://` origin; each pass reads half of {r["files"]} files of {r["file_mib"]} MiB
sequentially, 200 random 64 KiB reads, 100 small files, and writes, reads back and deletes
a 16 MiB file; every byte checked. Page cache dropped before each pass.

| pass | seconds | mountd RSS (MiB) |
|---:|---:|---:|
{rows}

RSS after the first pass {r["rss_after_first_pass_mib"]} MiB, peak {r["rss_peak_mib"]} MiB,
last {r["rss_last_mib"]} MiB: {r["growth_first_to_last_mib"]:+} MiB from the first pass to
the last, {r["growth_second_half_mib"]:+} MiB over the second half of the run. Run took
{r["seconds"]} s.

The bound docs/mount.md gives for these options is {r["documented_bound_mib"]} MiB: RSS
before the first read, plus the 256 MiB memory tier, plus 10 blocks of one sequential
stream, plus the 128 MiB of freed block buffers glibc may keep. The early growth is the
memory tier filling (the first block of each sequential read, the small files and the
written file's blocks are kept; read-ahead blocks and random ranges are not); a leak
would show as growth that goes on once the tier is full.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--files", type=int, default=8, help="large files in the origin")
    parser.add_argument("--file-mib", type=int, default=64, help="size of each large file")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop after this")
    harness.add_output_options(parser, name="mount_soak")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("mount_soak: run as root (FUSE mounts and drop_caches)")
    if args.passes < 2 or args.files < 2 or args.file_mib < 1:
        sys.exit("mount_soak: --passes and --files must be at least 2, --file-mib at least 1")
    harness.run_and_save(
        lambda root, procs, _workers: soak(root, procs, args),
        temp_prefix="mount-soak-",
        keep=args.keep,
        name=args.name,
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
