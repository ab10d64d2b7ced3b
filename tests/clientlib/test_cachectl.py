"""cachectl against a real cluster: ``status --json`` and ``cat``."""

from __future__ import annotations

import json
import os

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import free_port
from tests.conftest import cachectl, make_token, run_cachectl


async def test_status_json_has_the_design_fields_with_correct_numbers(
    make_cluster, client_for, s3, bucket
):
    cluster = make_cluster(2)
    data = os.urandom(2 * BS + 5)
    s3.put_object(Bucket=bucket, Key="a", Body=data)
    # No hedging: a read slower than 1 s on a loaded machine would also be asked of the
    # other node, a miss there, and the counts below would not be exact.
    first = await client_for(cluster, hedge_delay=60)
    assert await first.read(f"s3://{bucket}/a") == data  # 3 misses
    second = await client_for(cluster, hedge_delay=60)
    assert await second.read(f"s3://{bucket}/a") == data  # 3 hits
    result = await run_cachectl(
        "--etcd", cluster.etcd.url, "--cluster", cluster.name, "status", "--json"
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) == {"cluster", "block_size", "hit_rate", "nodes"}
    assert status["cluster"] == cluster.name
    assert status["block_size"] == BS
    assert status["hit_rate"] == 0.5
    assert {n["addr"] for n in status["nodes"]} == {n.addr for n in cluster.nodes}
    for row in status["nodes"]:
        assert set(row) == {
            "id",
            "addr",
            "state",
            "capacity_bytes",
            "used_bytes",
            "blocks",
            "hits",
            "misses",
            "hit_rate",
        }
        assert row["state"] == "active"
        assert row["capacity_bytes"] == 1024**3
    assert sum(n["blocks"] for n in status["nodes"]) == 3
    assert sum(n["used_bytes"] for n in status["nodes"]) == len(data)
    assert sum(n["hits"] for n in status["nodes"]) == 3
    assert sum(n["misses"] for n in status["nodes"]) == 3
    human = await run_cachectl("--etcd", cluster.etcd.url, "--cluster", cluster.name, "status")
    assert b"hit rate 50.0%" in human.stdout


async def test_cat_writes_the_exact_bytes_of_a_range(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(2)
    data = os.urandom(BS + 999)
    s3.put_object(Bucket=bucket, Key="c", Body=data)
    common = ("--etcd", cluster.etcd.url, "--cluster", cluster.name, "cat", f"s3://{bucket}/c")
    whole = await run_cachectl(*common)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == data
    part = await run_cachectl(*common, "--offset", str(BS - 10), "--length", "20")
    assert part.stdout == data[BS - 10 : BS + 10]


def test_cachectl_mistakes_are_one_line(etcd, s3_endpoint):
    cases = [
        (["status", "--bogus"], "unrecognized arguments"),
        (["--etcd", "grpc://x", "status"], "bad etcd URL"),
        (["--cluster", "../x", "status"], "bad cluster name"),
        (["--etcd", etcd.url, "cat", "ftp://x/y"], "unsupported URL"),
        (["--etcd", etcd.url, "cat", "s3://no-such-bucket-here/k"], "no such object"),
        (["--etcd", etcd.url, "cat", "file:///etc/hostname", "--offset", "-1"], "negative"),
        (["--etcd", f"http://127.0.0.1:{free_port()}", "status"], "unreachable"),
    ]
    for args, message in cases:
        result = cachectl(*args)
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode in (1, 2), (args, result.stderr)
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert lines[0].startswith("cachectl: error:")


async def test_warmup_cat_and_status_work_with_a_scoped_token(make_cluster, s3, bucket, secret):
    cluster = make_cluster(2, extra=["--token-file", str(secret)])
    data = os.urandom(BS + 999)
    s3.put_object(Bucket=bucket, Key="w/a", Body=data)
    token = await make_token(cluster, secret, f"s3://{bucket}/w/")
    common = ("--etcd", cluster.etcd.url, "--cluster", cluster.name, "--token-file", str(token))
    warm = await run_cachectl(*common, "warmup", f"s3://{bucket}/w/", "--json")
    assert warm.returncode == 0, warm.stderr
    report = json.loads(warm.stdout)
    assert report["blocks_fetched"] == 2 and report["errors"] == 0
    cat = await run_cachectl(*common, "cat", f"s3://{bucket}/w/a")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == data
    assert cluster.metric("ringcache_block_hits_total") == 2  # served by the warmed nodes
    assert cluster.metric("ringcache_requests_refused_total") == 0
    status = await run_cachectl(*common, "status", "--json")
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    assert {n["addr"] for n in nodes} == {n.addr for n in cluster.nodes}
    assert sum(n["blocks"] for n in nodes) == 2
    assert sum(n["hits"] for n in nodes) == 2
