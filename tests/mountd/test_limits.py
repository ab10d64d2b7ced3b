"""--download-limit and --upload-limit: one mount's bandwidth caps (token buckets).

The assertions are lower bounds that our own limiter sets (a capped mount cannot move
N bytes faster than (N - one second's burst) / rate), not performance thresholds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS

MiB = 1024 * 1024


def test_download_limit_caps_cold_and_warm_reads(make_cluster, mount, s3, bucket):
    size, rate = 3 * BS, 4 * MiB  # 12 MiB at 4 MiB/s: >= 2 s after the 4 MiB burst
    data = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    cluster = make_cluster(1)
    floor = (size - rate) / rate - 0.1  # the bucket may start full: one second's worth
    for temperature in ("cold", "warm"):
        # No local disk tier: the second mount must pull from the (warm) node again.
        m = mount(cluster, f"s3://{bucket}", "--download-limit", "4MiB", "--local-cache", "off")
        started = time.monotonic()
        assert (m.path / "big.bin").read_bytes() == data
        elapsed = time.monotonic() - started
        assert elapsed >= floor, f"{temperature}: {size} bytes in {elapsed:.2f}s"
        assert m.metric("ringcache_mount_limited_bytes_total", 'direction="download"') == size
        assert m.metric("ringcache_client_block_reads_total", 'source="peer"') == 3
        m.unmount()
        # Cold: the node fetched every block from the origin; warm: it had them all.
        assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == 3


def test_upload_limit_caps_a_write(make_cluster, mount, s3, bucket):
    size, rate = 24 * MiB, 8 * MiB  # multipart (16 MiB parts) at 8 MiB/s: >= 2 s
    data = os.urandom(size)
    m = mount(make_cluster(1), f"s3://{bucket}", "--upload-limit", "8MiB/s")
    started = time.monotonic()
    with open(m.path / "out.bin", "wb") as fh:
        fh.write(data)
    elapsed = time.monotonic() - started  # close() returns once the upload is done
    assert elapsed >= (size - rate) / rate - 0.1, f"{size} bytes in {elapsed:.2f}s"
    assert s3.get_object(Bucket=bucket, Key="out.bin")["Body"].read() == data
    assert m.metric("ringcache_mount_limited_bytes_total", 'direction="upload"') >= size


def test_bad_limit_is_a_one_line_error(tmp_path):
    for flag, value, message in [
        ("--download-limit", "fast", "--download-limit: 'fast' is not a size"),
        ("--upload-limit", "100", "--upload-limit: '100' is below 1KiB/s"),
    ]:
        args = ["s3://bucket", str(tmp_path), "--etcd", "http://127.0.0.1:1", flag, value]
        proc = subprocess.run(
            [sys.executable, "-m", "mountd", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mountd: error: {message}"), proc.stderr
