"""Benchmark of the mount against the references a user would pick instead, in one run.

Everything runs on loopback over one moto_server S3 endpoint: etcd, three cache nodes,
``mountd``, ``rclone mount --vfs-cache-mode full`` and ``s3fs -o use_cache``. The page
cache is dropped before every timed read (``/proc/sys/vm/drop_caches``, so run as root).

* sequential read of a large file, cold and warm. mountd warm is a *fresh second mount*
  (only the cache nodes are warm); rclone and s3fs warm is a second read through the same
  mount (their local disk cache is warm);
* random 64 KiB reads of that file, warm: from the cache nodes (a fresh mount), and from
  a mount's ``--local-cache`` disk tier after it read the file once (like rclone's and
  s3fs's local disk caches);
* a directory of 1,000 small files: list it and read every file, cold;
* N mounts reading one new file at once: bytes the origin served / file size.

``--s3-model TTFB_MS:MBPS`` puts loadtest/s3model.py between every reader and moto: S3's
costs (time to first byte, bandwidth per connection) with moto's answers. Over bare moto
a ranged GET of a large object costs a copy of the whole object, which no real object
store does, so cold reads measure moto (see s3model.py).

Usage: ``python -m loadtest.bench_mount [--size-mib 256] [--s3-model 50:90]``; writes
``loadtest/results/mount.json`` (``mount-s3model.json`` with the model); the figures are
discussed in ``loadtest/results/mount.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import boto3.s3.transfer

from clientlib.launcher import (
    Node,
    Process,
    free_port,
    http_ok,
    start_etcd,
    start_node,
    wait_until,
)
from testkit import metric_sum

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def metric(url: str, name: str, labels: str = "") -> float:
    """A sample of the ``/metrics`` at ``url`` (summed over label sets if unspecified)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return metric_sum(resp.read().decode(), name, labels)


def read_sequential(path: Path) -> float:
    """Read the whole file in 1 MiB reads; MB/s."""
    drop_caches()
    started = time.perf_counter()
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, MIB):
            total += len(chunk)
    finally:
        os.close(fd)
    return total / 1e6 / (time.perf_counter() - started)


def read_random(path: Path, count: int = 300, size: int = 64 * 1024) -> float:
    """``count`` preads of ``size`` bytes at random offsets; reads per second."""
    drop_caches()
    length = path.stat().st_size
    rng = random.Random(7)
    offsets = [rng.randrange(0, length - size) for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    started = time.perf_counter()
    try:
        for offset in offsets:
            assert len(os.pread(fd, size, offset)) == size
    finally:
        os.close(fd)
    return count / (time.perf_counter() - started)


def list_and_read(path: Path) -> float:
    """List a directory and read every file in it; seconds."""
    drop_caches()
    started = time.perf_counter()
    names = os.listdir(path)
    for name in names:
        with open(path / name, "rb") as fh:
            fh.read()
    return time.perf_counter() - started


class Mounted:
    """A FUSE file system process, unmounted on exit."""

    def __init__(
        self, name: str, cmd: list[str], path: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.proc = Process(name, cmd, log, env=env).start()
        deadline = time.monotonic() + 60
        while not os.path.ismount(path):
            if not self.proc.alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{name} did not mount:\n{self.proc.log_tail()}")
            time.sleep(0.05)

    def close(self) -> None:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
        self.proc.stop(timeout=20)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument(
        "--s3-model",
        metavar="TTFB_MS:MBPS",
        help="S3's costs in front of moto: ms to first byte, MB/s per connection (e.g. 50:90)",
    )
    parser.add_argument("--mounts", type=int, default=3, help="N for the origin-cost run")
    parser.add_argument("--skip-references", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_mount: run as root (drop_caches and FUSE mounts)")
    work = Path(tempfile.mkdtemp(prefix="bench-mount-"))
    procs: list[Process] = []
    mounts: list[Mounted] = []
    results: dict[str, object] = {
        "size_mib": args.size_mib,
        "small_files": args.small_files,
        "s3_model": args.s3_model,
        "machine": {"cpus": os.cpu_count()},
    }
    try:
        port = free_port()
        moto_bin = (
            shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        )
        moto = Process(
            "moto", [moto_bin, "-H", "127.0.0.1", "-p", str(port)], work / "moto.log"
        ).start()
        procs.append(moto)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/"), 30, "moto_server")
        s3_port = port
        if args.s3_model:
            ttfb, _, mbps = args.s3_model.partition(":")
            s3_port = free_port()
            model = [sys.executable, "-m", "loadtest.s3model"]
            model += ["--upstream", f"http://127.0.0.1:{port}", "--port", str(s3_port)]
            model += ["--ttfb-ms", ttfb, "--mbps-per-conn", mbps or "90"]
            procs.append(Process("s3model", model, work / "s3model.log").start())
            wait_until(lambda: http_ok(f"http://127.0.0.1:{s3_port}/moto-api/"), 30, "s3model")
        endpoint = f"http://127.0.0.1:{s3_port}"
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        etcd = start_etcd(work / "etcd")
        procs.append(etcd)
        nodes: list[Node] = [
            start_node(etcd.url, "bench", work / f"node{i}", size="4GiB") for i in range(3)
        ]
        procs.extend(nodes)

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        bucket = "bench"
        s3.create_bucket(Bucket=bucket)
        big = work / "big.bin"
        with big.open("wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(MIB))
        config = boto3.s3.transfer.TransferConfig(multipart_chunksize=64 * MIB)
        for key in ("big.bin", "shared.bin"):
            s3.upload_file(str(big), bucket, key, Config=config)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: s3.put_object(
                        Bucket=bucket, Key=f"small/f{i:04d}", Body=os.urandom(4096)
                    ),
                    range(args.small_files),
                )
            )
        if args.s3_model:
            # The model fetches its copy of an object from moto at the first GET; that is
            # the model's cost, not S3's, so no timed reader may be the one to pay it.
            model_s3 = boto3.client("s3", endpoint_url=endpoint)
            for key in ("big.bin", "shared.bin"):
                model_s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()
        print(f"data ready in {work}", flush=True)

        def origin_bytes() -> float:
            return sum(metric(n.url + "/metrics", "ringcache_origin_bytes_total") for n in nodes)

        def mountd(name: str, *extra: str) -> tuple[Mounted, str]:
            mport = free_port()
            m = Mounted(
                name,
                [
                    sys.executable,
                    "-m",
                    "mountd",
                    f"s3://{bucket}",
                    str(work / name),
                    "--etcd",
                    etcd.url,
                    "--cluster",
                    "bench",
                    "--foreground",
                    "--metrics-listen",
                    f"127.0.0.1:{mport}",
                    "--log-level",
                    "WARNING",
                    *extra,
                ],
                work / name,
                work / f"{name}.log",
            )
            mounts.append(m)
            return m, f"http://127.0.0.1:{mport}/metrics"

        # -- mountd ------------------------------------------------------------------------
        r: dict[str, float] = {}
        cold, _ = mountd("mountd-cold")
        before = origin_bytes()
        r["seq_cold_mbps"] = read_sequential(cold.path / "big.bin")
        r["origin_bytes_cold_ratio"] = (origin_bytes() - before) / big.stat().st_size
        cold.close()
        warm, warm_metrics = mountd("mountd-warm")
        r["seq_warm_mbps"] = read_sequential(warm.path / "big.bin")
        r["warm_origin_block_reads"] = metric(
            warm_metrics, "ringcache_client_block_reads_total", 'source="origin"'
        )
        warm.close()
        rnd, _ = mountd("mountd-random")
        r["random_64k_per_s"] = read_random(rnd.path / "big.bin")
        r["small_files_s"] = list_and_read(rnd.path / "small")
        rnd.close()
        # Like for like with rclone's and s3fs's local disk caches: a mount with a local
        # disk tier that has read the file once.
        local, _ = mountd("mountd-local", "--local-cache", f"{work}/local-tier:1GiB")
        read_sequential(local.path / "big.bin")
        r["random_64k_local_tier_per_s"] = read_random(local.path / "big.bin")
        local.close()
        shared = [mountd(f"mountd-shared{i}")[0] for i in range(args.mounts)]
        before = origin_bytes()
        drop_caches()
        with ThreadPoolExecutor(args.mounts) as pool:
            list(pool.map(lambda m: read_sequential(m.path / "shared.bin"), shared))
        r["n_mounts"] = args.mounts
        r["n_mounts_origin_bytes_ratio"] = (origin_bytes() - before) / big.stat().st_size
        for m in shared:
            m.close()
        results["mountd"] = r
        print("mountd", r, flush=True)

        if not args.skip_references:
            # -- rclone mount --vfs-cache-mode full ------------------------------------------
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            env.update(
                RCLONE_CONFIG_MOTO_TYPE="s3",
                RCLONE_CONFIG_MOTO_PROVIDER="Other",
                RCLONE_CONFIG_MOTO_ENDPOINT=endpoint,
                RCLONE_CONFIG_MOTO_ACCESS_KEY_ID="testing",
                RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY="testing",
                RCLONE_CONFIG_MOTO_REGION="us-east-1",
                RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE="true",
                RCLONE_CONFIG="/dev/null",
            )

            def rclone(name: str) -> Mounted:
                m = Mounted(
                    name,
                    [
                        "rclone",
                        "mount",
                        f"moto:{bucket}",
                        str(work / name),
                        "--vfs-cache-mode",
                        "full",
                        "--cache-dir",
                        str(work / f"{name}-cache"),
                    ],
                    work / name,
                    work / f"{name}.log",
                    env=env,
                )
                mounts.append(m)
                return m

            rc: dict[str, float] = {}
            m = rclone("rclone")
            rc["seq_cold_mbps"] = read_sequential(m.path / "big.bin")
            rc["seq_warm_mbps"] = read_sequential(m.path / "big.bin")
            rc["random_64k_per_s"] = read_random(m.path / "big.bin")
            m.close()
            m = rclone("rclone-small")
            rc["small_files_s"] = list_and_read(m.path / "small")
            m.close()
            results["rclone"] = rc
            print("rclone", rc, flush=True)

            # -- s3fs -o use_cache ------------------------------------------------------------
            passwd = work / "s3fs.passwd"
            passwd.write_text("testing:testing\n")
            passwd.chmod(0o600)

            def s3fs(name: str) -> Mounted:
                (work / f"{name}-cache").mkdir()
                m = Mounted(
                    name,
                    [
                        "s3fs",
                        bucket,
                        str(work / name),
                        "-f",
                        "-o",
                        f"passwd_file={passwd}",
                        "-o",
                        f"url={endpoint}",
                        "-o",
                        "use_path_request_style",
                        "-o",
                        f"use_cache={work / f'{name}-cache'}",
                    ],
                    work / name,
                    work / f"{name}.log",
                )
                mounts.append(m)
                return m

            sf: dict[str, float] = {}
            m = s3fs("s3fs")
            sf["seq_cold_mbps"] = read_sequential(m.path / "big.bin")
            sf["seq_warm_mbps"] = read_sequential(m.path / "big.bin")
            sf["random_64k_per_s"] = read_random(m.path / "big.bin")
            m.close()
            m = s3fs("s3fs-small")
            sf["small_files_s"] = list_and_read(m.path / "small")
            m.close()
            results["s3fs"] = sf
            print("s3fs", sf, flush=True)
            md = results["mountd"]
            assert isinstance(md, dict)
            results["ratios"] = {
                "warm_vs_rclone_warm": md["seq_warm_mbps"] / rc["seq_warm_mbps"],
                "cold_vs_rclone_cold": md["seq_cold_mbps"] / rc["seq_cold_mbps"],
                "cold_vs_s3fs_cold": md["seq_cold_mbps"] / sf["seq_cold_mbps"],
                "warm_vs_s3fs_warm": md["seq_warm_mbps"] / sf["seq_warm_mbps"],
                "random_vs_rclone": md["random_64k_per_s"] / rc["random_64k_per_s"],
                "random_local_tier_vs_rclone": md["random_64k_local_tier_per_s"]
                / rc["random_64k_per_s"],
                "small_files_speedup_vs_rclone": rc["small_files_s"] / md["small_files_s"],
                "small_files_speedup_vs_s3fs": sf["small_files_s"] / md["small_files_s"],
            }
    finally:
        for m in mounts:
            with contextlib.suppress(Exception):
                m.close()
        for p in reversed(procs):
            p.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-s3model" if args.s3_model else ""
    (RESULTS / f"mount{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
