#!/usr/bin/env python3
"""Warmup throughput: ``cachectl warmup`` against the origin's own parallel GET rate.

All on 127.0.0.1: moto_server as S3, behind :class:`testkit.S3Proxy` with
``--delay`` seconds to first byte (cloud object storage has tens of milliseconds; moto on
loopback has none), one etcd and three cachenode processes. The bucket holds
``--objects`` objects of ``--object-mib`` MiB. Side by side, in one run:

- ``boto3``: the same blocks fetched straight from the (delayed) endpoint with boto3,
  ``--threads`` ranged GETs in flight: the origin's own parallel GET rate, the best any
  warmup could do from one machine;
- ``warmup``: ``clientlib.warmup.warmup`` of the bucket (what ``cachectl warmup`` runs)
  with ``--threads`` batches in flight; each block is fetched once by its owner;
- ``warmup again``: the second warmup, which must fetch nothing.

    .venv/bin/python -m loadtest.bench_warmup            # ~1 minute

Results: ``loadtest/results/warmup.json`` and ``warmup.md``. Everything it starts is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import (
    Process,
    free_port,
    http_ok,
    start_etcd,
    start_node,
    wait_until,
)
from clientlib.warmup import warmup
from testkit import S3Proxy

RESULTS = Path(__file__).resolve().parent / "results"


def boto3_parallel(bucket: str, keys: list[str], size: int, threads: int) -> float:
    """Seconds to GET every block of every key with ``threads`` ranged GETs in flight."""
    s3 = boto3.client("s3")
    ranges = [(k, off) for k in keys for off in range(0, size, BS)]

    def get(item: tuple[str, int]) -> int:
        key, off = item
        end = min(size, off + BS) - 1
        return len(s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{end}")["Body"].read())

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        assert sum(pool.map(get, ranges)) == size * len(keys)
    return time.monotonic() - started


async def main(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="ringcache-warmup-"))
    procs: list[Process] = []
    proxy: S3Proxy | None = None
    try:
        port = free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        procs.append(
            Process(
                "moto",
                [moto or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                work / "moto.log",
            ).start()
        )
        upstream = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(upstream + "/moto-api/"), 30, "moto_server")
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
        )
        proxy = S3Proxy(upstream, delay=args.delay)
        endpoint = await proxy.start()
        os.environ["AWS_ENDPOINT_URL"] = upstream
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        size = args.object_mib * 1024 * 1024
        keys = [f"bars/{i:04d}.bin" for i in range(args.objects)]
        body = os.urandom(size)
        for key in keys:
            s3.put_object(Bucket="bench", Key=key, Body=body)
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # everyone below sees the delayed origin
        total = size * len(keys)
        blocks = len(keys) * -(-size // BS)

        direct = await asyncio.to_thread(boto3_parallel, "bench", keys, size, args.threads)

        etcd = start_etcd(work / "etcd")
        procs.append(etcd)
        for i in range(3):
            procs.append(start_node(etcd.url, "bench", work / f"node{i}", size="4GiB"))
        async with CacheClient(etcd.url, "bench") as client:
            while len(client.ring) < 3:
                await asyncio.sleep(0.05)
            first = await warmup(client, ["s3://bench/bars/"], threads=args.threads)
            again = await warmup(client, ["s3://bench/bars/"], threads=args.threads)
        assert first.blocks_fetched == blocks and first.errors == 0, first
        assert again.blocks_fetched == 0, again
        rows = {
            "boto3 parallel GETs": (direct, blocks, total),
            "warmup (3 nodes)": (first.seconds, first.blocks_fetched, first.bytes_fetched),
            "warmup again": (again.seconds, again.blocks_fetched, again.bytes_fetched),
        }
        return {
            "objects": len(keys),
            "object_bytes": size,
            "blocks": blocks,
            "origin_delay_s": args.delay,
            "threads": args.threads,
            "results": {
                name: {
                    "seconds": round(sec, 3),
                    "blocks_fetched": nblocks,
                    "blocks_per_s": round(nblocks / sec, 1) if sec else 0,
                    "mb_per_s": round(nbytes / sec / 1e6, 1) if sec else 0,
                }
                for name, (sec, nblocks, nbytes) in rows.items()
            },
            "warmup_vs_boto3": round(direct / first.seconds, 2),
        }
    finally:
        if proxy is not None:
            await proxy.stop()
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(doc: dict) -> str:  # type: ignore[type-arg]
    lines = [
        "# Warmup throughput against the origin's own parallel GET rate",
        "",
        f"{doc['objects']} objects x {doc['object_bytes'] >> 20} MiB = {doc['blocks']} blocks; "
        f"origin = moto_server behind a {doc['origin_delay_s'] * 1000:.0f} ms time-to-first-byte "
        f"proxy; {doc['threads']} requests/batches in flight. One run on a shared 2-core machine.",
        "",
        "| run | seconds | blocks | blocks/s | MB/s |",
        "|---|---|---|---|---|",
    ]
    for name, r in doc["results"].items():
        lines.append(
            f"| {name} | {r['seconds']} | {r['blocks_fetched']} | "
            f"{r['blocks_per_s']} | {r['mb_per_s']} |"
        )
    lines += ["", f"Warmup rate / boto3 rate: **{doc['warmup_vs_boto3']}x**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--object-mib", type=int, default=8)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.03, help="origin time to first byte, s")
    doc = asyncio.run(main(parser.parse_args()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "warmup.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = report(doc)
    (RESULTS / "warmup.md").write_text(text)
    print(text)
