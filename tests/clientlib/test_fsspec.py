"""pandas and pyarrow read through the cache with ``ringcache::s3://``, no mount."""

from __future__ import annotations

import asyncio
import io

import fsspec
import pandas as pd
import pyarrow.dataset as ds

from tests.conftest import node_metric


def frame(rows: int = 50_000) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-02 09:30", periods=rows, freq="min"),
            "ticker": ["AAPL", "MSFT"] * (rows // 2),
            "close": [100 + i * 0.01 for i in range(rows)],
        }
    )


async def test_pandas_reads_parquet_via_ringcache_chain_and_hits_the_second_time(
    make_cluster, s3, bucket
):
    cluster = make_cluster(2)
    df = frame()
    buf = io.BytesIO()
    df.to_parquet(buf)
    s3.put_object(Bucket=bucket, Key="bars/x.parquet", Body=buf.getvalue())
    # No hedging: a hit slower than 1 s on a loaded machine would be asked of the other
    # node too, a miss there and an origin GET, and the counts below would not be exact.
    options = {"ringcache": {"etcd": cluster.etcd.url, "cluster": cluster.name, "hedge_delay": 60}}
    url = f"ringcache::s3://{bucket}/bars/x.parquet"

    def read() -> pd.DataFrame:
        fsspec.config.conf.clear()
        return pd.read_parquet(url, storage_options=options)

    first = await asyncio.to_thread(read)
    pd.testing.assert_frame_equal(first, df)
    misses = sum(node_metric(n, "ringcache_block_misses_total") for n in cluster.nodes)
    assert misses >= 1
    fs = fsspec.filesystem("ringcache", **options["ringcache"], skip_instance_cache=True)
    fs.client.clear_local()
    hits_before = sum(node_metric(n, "ringcache_block_hits_total") for n in cluster.nodes)
    with fs.open(f"s3://{bucket}/bars/x.parquet") as fh:
        again = pd.read_parquet(fh)
    pd.testing.assert_frame_equal(again, df)
    hits = sum(node_metric(n, "ringcache_block_hits_total") for n in cluster.nodes)
    assert hits > hits_before
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == misses


async def test_fsspec_open_ranges_and_pyarrow_dataset_read_exact_data(make_cluster, s3, bucket):
    cluster = make_cluster(1)
    body = bytes(range(256)) * 40_000
    s3.put_object(Bucket=bucket, Key="raw/blob.bin", Body=body)
    df = frame(1000)
    buf = io.BytesIO()
    df.to_parquet(buf)
    s3.put_object(Bucket=bucket, Key="ds/part-0.parquet", Body=buf.getvalue())
    opts = {"etcd": cluster.etcd.url, "cluster": cluster.name}

    def work() -> None:
        with fsspec.open(f"ringcache::s3://{bucket}/raw/blob.bin", ringcache=opts) as fh:
            fh.seek(4_194_300)
            assert fh.read(100) == body[4_194_300:4_194_400]
        fs = fsspec.filesystem("ringcache", **opts)
        assert fs.info(f"s3://{bucket}/raw/blob.bin")["size"] == len(body)
        assert fs.ls(f"s3://{bucket}/ds", detail=False) == [f"{bucket}/ds/part-0.parquet"]
        table = ds.dataset(f"{bucket}/ds", filesystem=fs, format="parquet").to_table()
        pd.testing.assert_frame_equal(table.to_pandas(), df)

    await asyncio.to_thread(work)
