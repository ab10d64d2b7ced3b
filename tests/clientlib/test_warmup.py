"""cachectl warmup / --check / --evict, top and drain, against a real cluster."""

from __future__ import annotations

import asyncio
import json
import os
import time

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.status import list_nodes
from clientlib.warmup import warmup
from testkit import S3Proxy
from tests.conftest import cachectl, client_metric, run_cachectl

SIZES = {"hot/a.bin": 2 * BS + 100, "hot/b.bin": BS, "hot/deep/c.bin": 3000, "cold/d.bin": BS + 1}


def put_objects(s3, bucket) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    objects = {}
    for key, size in SIZES.items():
        objects[key] = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=key, Body=objects[key])
    return objects


def ctl(cluster, *args: str) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    return ("--etcd", cluster.etcd.url, "--cluster", cluster.name, *args)


async def test_warmup_fetches_exactly_the_prefix_once_and_reads_then_hit(
    make_cluster, client_for, s3, bucket
):
    objects = put_objects(s3, bucket)
    cluster = make_cluster(3)
    hot_blocks = 3 + 1 + 1
    result = await run_cachectl(*ctl(cluster, "warmup", f"s3://{bucket}/hot/", "--json"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "blocks_total", "blocks_already_cached", "blocks_fetched", "bytes_fetched", "seconds",
        "errors",
    }  # fmt: skip
    assert report["blocks_total"] == hot_blocks
    assert report["blocks_fetched"] == hot_blocks
    assert report["blocks_already_cached"] == 0
    assert report["bytes_fetched"] == sum(v for k, v in SIZES.items() if k.startswith("hot/"))
    assert report["errors"] == 0
    # Each block came from the origin once for the whole cluster.
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == hot_blocks

    check_hot = await run_cachectl(
        *ctl(cluster, "warmup", f"s3://{bucket}/hot/", "--check", "--json")
    )
    assert json.loads(check_hot.stdout) == {
        "blocks_total": hot_blocks, "blocks_cached": hot_blocks, "ratio": 1.0
    }  # fmt: skip
    check_cold = await run_cachectl(
        *ctl(cluster, "warmup", f"s3://{bucket}/cold/", "--check", "--json")
    )
    assert json.loads(check_cold.stdout) == {"blocks_total": 2, "blocks_cached": 0, "ratio": 0.0}

    client = await client_for(cluster)
    for key in ("hot/a.bin", "hot/b.bin", "hot/deep/c.bin"):
        assert await client.read(f"s3://{bucket}/{key}") == objects[key]
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == hot_blocks

    again = await run_cachectl(*ctl(cluster, "warmup", f"s3://{bucket}/hot/", "--json"))
    second = json.loads(again.stdout)
    assert second["blocks_fetched"] == 0 and second["bytes_fetched"] == 0
    assert second["blocks_already_cached"] == hot_blocks

    table = await run_cachectl(*ctl(cluster, "warmup", f"s3://{bucket}/", "--check"))
    text = table.stdout.decode()
    assert f"s3://{bucket}/hot/deep" in text and "100.0%" in text and "0.0%" in text

    evicted = await run_cachectl(
        *ctl(cluster, "warmup", f"s3://{bucket}/hot/", "--evict", "--json")
    )
    assert json.loads(evicted.stdout) == {"blocks_evicted": hot_blocks}
    after = await run_cachectl(*ctl(cluster, "warmup", f"s3://{bucket}/hot/", "--check", "--json"))
    assert json.loads(after.stdout)["blocks_cached"] == 0


async def test_warmup_of_a_file_list_and_a_file_origin(make_cluster, tmp_path):
    cluster = make_cluster(2)
    data = tmp_path / "bars"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.csv").write_bytes(os.urandom(1000 + i))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of three\nfile://{data}/0.csv\nfile://{data}/2.csv\n")
    result = await run_cachectl(*ctl(cluster, "warmup", "--file-list", str(listing), "--json"))
    assert json.loads(result.stdout)["blocks_fetched"] == 2


def test_warmup_mistakes_are_one_line(etcd, s3_endpoint, s3, bucket):
    cases = [
        (["warmup", f"s3://{bucket}/nothing-here/"], "nothing to warm"),
        (["warmup", "http://example.com/x"], "unsupported URL"),
        (["warmup", "/tmp"], "not inside a ringcache mount"),
        (["warmup", "/no/such/path"], "no such file"),
        (["warmup"], "at least one SOURCE"),
        (["warmup", f"s3://{bucket}/", "--threads", "0"], "--threads"),
        (["warmup", "--file-list", "/no/such/list"], "--file-list"),
        (["warmup", f"s3://{bucket}/", "--check", "--evict"], "not allowed with"),
        (["drain", "no-such-node"], "no node 'no-such-node'"),
    ]
    for args, message in cases:
        result = cachectl("--etcd", etcd.url, "--cluster", "nobody", *args)
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode != 0, args
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)


async def test_top_shows_every_node_with_hit_ratios(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(2)
    s3.put_object(Bucket=bucket, Key="t", Body=os.urandom(BS))
    for _ in range(2):
        client = await client_for(cluster)
        await client.read(f"s3://{bucket}/t")
    result = await run_cachectl(*ctl(cluster, "top", "--iterations", "2", "--interval", "0.2"))
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    for node in cluster.nodes:
        node_id = (node.cache_dir / "node-id").read_text().strip()
        assert node_id in text
    assert "50.0%" in text  # one miss then one hit, by count and by bytes


async def test_drain_takes_the_node_out_and_it_exits(make_cluster, client_for, s3, bucket):
    cluster = make_cluster(2)
    data = os.urandom(3 * BS)
    s3.put_object(Bucket=bucket, Key="d", Body=data)
    client = await client_for(cluster)
    victim = cluster.nodes[0]
    victim_id = (victim.cache_dir / "node-id").read_text().strip()
    drain = asyncio.create_task(run_cachectl(*ctl(cluster, "drain", victim_id)))
    reads = 0
    while not drain.done():  # reads go on while the node drains
        client.clear_local()
        assert await client.read(f"s3://{bucket}/d") == data
        reads += 1
    result = await drain
    assert result.returncode == 0, result.stderr
    assert f"node {victim_id} has left the cluster" in result.stdout.decode()
    assert reads > 0
    assert await asyncio.to_thread(victim.popen.wait, 15) == 0
    _, nodes = await list_nodes(cluster.etcd.url, cluster.name)
    assert [n.addr for n in nodes] == [cluster.nodes[1].addr]


async def test_warmup_of_a_path_inside_a_mount_uses_its_source(make_cluster, s3, bucket, tmp_path):
    from clientlib.launcher import start_mount

    objects = put_objects(s3, bucket)
    cluster = make_cluster(2)
    mount = await asyncio.to_thread(
        start_mount, f"s3://{bucket}", tmp_path / "mnt", cluster.etcd.url, cluster.name
    )
    try:
        result = await run_cachectl(*ctl(cluster, "warmup", str(mount.path / "hot"), "--json"))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["blocks_fetched"] == 5
        one = mount.path / "hot" / "b.bin"
        result = await run_cachectl(*ctl(cluster, "warmup", str(one), "--check", "--json"))
        assert json.loads(result.stdout) == {"blocks_total": 1, "blocks_cached": 1, "ratio": 1.0}
        assert (await asyncio.to_thread(one.read_bytes)) == objects["hot/b.bin"]
    finally:
        await asyncio.to_thread(mount.stop)


async def test_a_read_joining_a_warm_fetch_gets_the_stored_block_without_a_second_get(
    make_cluster, client_for, s3_endpoint, s3, bucket
):
    # A warm fetch keeps no copy of the bytes (they go from the origin's socket to the
    # block file); a read of the block meanwhile waits for it and reads the stored file.
    body = os.urandom(2 * BS + 100)
    s3.put_object(Bucket=bucket, Key="slow/a.bin", Body=body)
    proxy = S3Proxy(s3_endpoint, delay=2.0)
    slow = await proxy.start()
    cluster = make_cluster(1, env={**os.environ, "AWS_ENDPOINT_URL": slow})
    client = await client_for(cluster, hedge_delay=30.0)  # no hedge to the origin meanwhile
    warming = asyncio.create_task(warmup(client, [f"s3://{bucket}/slow/"]))
    deadline = time.monotonic() + 20
    while proxy.gets_in_flight < 3:  # the warm fetches of all 3 blocks wait for the origin
        assert time.monotonic() < deadline and not warming.done(), proxy.gets_in_flight
        await asyncio.sleep(0.02)
    direct = client_metric("ringcache_client_block_reads_total", source="origin")
    assert await client.read(f"s3://{bucket}/slow/a.bin") == body
    # from the node, not the client's own fallback to the origin
    assert client_metric("ringcache_client_block_reads_total", source="origin") == direct
    report = await warming
    assert (report.blocks_fetched, report.bytes_fetched, report.errors) == (3, len(body), 0)
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == 3
    assert proxy.gets == 3
    await proxy.stop()
