"""S3 clients nobody here wrote, through the gateway: the aws CLI, rclone, pyarrow,
polars (object_store), s3fs and DuckDB (httpfs) read the origin's exact bytes, and a
second read is served by the cache with no origin GET; what the aws CLI writes lands in
the origin and reads back from the cache.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3
import duckdb
import duckdb_extension_httpfs
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import pytest
import s3fs

from tests.s3gate.conftest import SECRETS, Setup

MiB = 1024 * 1024
AWS = str(Path(sys.executable).parent / "aws")


@pytest.fixture(scope="module")
def table(setup: Setup) -> pa.Table:
    """A Parquet file of several blocks' worth in the origin (``data/bars.parquet``)."""
    rows = 700_000
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "ts": np.arange(rows),
            "price": rng.random(rows),
            "noise": rng.integers(0, 2**62, rows),
        }
    )
    out = io.BytesIO()
    frame.to_parquet(out, row_group_size=100_000)
    assert len(out.getvalue()) > 5 * MiB  # more than one 4 MiB block
    boto3.client("s3").put_object(Bucket=setup.bucket, Key="data/bars.parquet", Body=out.getvalue())
    return pq.read_table(io.BytesIO(out.getvalue()))


def twice(setup: Setup, read):  # type: ignore[no-untyped-def]
    """``read()`` twice: the first result, after checking the second is the same and
    cost the origin no GET."""
    first = read()
    before = setup.origin_gets()
    assert read() == first
    assert setup.origin_gets() == before, "the second read went to the origin"
    return first


def gets(setup: Setup) -> float:
    """GetObject requests the gateway has answered so far."""
    return setup.metric("ringcache_gateway_requests_total", 'op="GetObject"')


def aws(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "full",
        "AWS_SECRET_ACCESS_KEY": SECRETS["full"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    env.pop("AWS_ENDPOINT_URL", None)
    result = subprocess.run(
        [AWS, "--endpoint-url", setup.gateway.endpoint, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_aws_cli_copies_syncs_and_reads_ranges(setup: Setup, tmp_path: Path):
    origin = boto3.client("s3")
    files = {f"cli/in/{n}.bin": os.urandom(size) for n, size in (("a", 5 * MiB), ("b", 1000))}
    for key, data in files.items():
        origin.put_object(Bucket=setup.bucket, Key=key, Body=data)

    aws(setup, "s3", "sync", f"s3://{setup.bucket}/cli/in", str(tmp_path / "synced"))
    assert (tmp_path / "synced" / "b.bin").read_bytes() == files["cli/in/b.bin"]
    assert (tmp_path / "synced" / "a.bin").read_bytes() == files["cli/in/a.bin"]
    before = setup.origin_gets()
    aws(setup, "s3", "cp", f"s3://{setup.bucket}/cli/in/a.bin", str(tmp_path / "a.bin"))
    assert (tmp_path / "a.bin").read_bytes() == files["cli/in/a.bin"]
    assert setup.origin_gets() == before
    aws(
        setup, "s3api", "get-object", "--bucket", setup.bucket, "--key", "cli/in/a.bin",
        "--range", "bytes=4194300-4194399", str(tmp_path / "part"),
    )  # fmt: skip
    assert (tmp_path / "part").read_bytes() == files["cli/in/a.bin"][4194300:4194400]

    written = os.urandom(9 * MiB + 5)  # above the CLI's 8 MiB threshold: multipart
    (tmp_path / "up.bin").write_bytes(written)
    aws(setup, "s3", "cp", str(tmp_path / "up.bin"), f"s3://{setup.bucket}/cli/out/up.bin")
    stored = origin.get_object(Bucket=setup.bucket, Key="cli/out/up.bin")["Body"].read()
    assert stored == written
    before = setup.origin_gets()
    aws(setup, "s3", "cp", f"s3://{setup.bucket}/cli/out/up.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == written
    assert setup.origin_gets() == before


def test_rclone_lists_and_copies(setup: Setup, tmp_path: Path):
    origin = boto3.client("s3")
    files = {"rc/x/1.bin": os.urandom(6 * MiB), "rc/x/2.bin": os.urandom(10), "rc/y.bin": b"y"}
    for key, data in files.items():
        origin.put_object(Bucket=setup.bucket, Key=key, Body=data)
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[gw]\ntype = s3\nprovider = Other\naccess_key_id = full\n"
        f"secret_access_key = {SECRETS['full']}\nendpoint = {setup.gateway.endpoint}\n"
        "region = us-east-1\nforce_path_style = true\nno_check_bucket = true\n"
    )

    def rclone(*args: str) -> str:
        result = subprocess.run(
            ["rclone", "--config", str(config), "--retries", "1", *args],
            capture_output=True,
            text=True,
            timeout=120,
            # Only the config file: rclone takes AWS_* variables (a CA bundle...) too.
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert rclone("lsf", f"gw:{setup.bucket}/rc").split() == ["x/", "y.bin"]
    assert sorted(rclone("lsf", "-R", f"gw:{setup.bucket}/rc").split()) == [
        "x/", "x/1.bin", "x/2.bin", "y.bin",
    ]  # fmt: skip

    def copy() -> dict[str, bytes]:
        target = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}"
        rclone("copy", f"gw:{setup.bucket}/rc", str(target))
        return {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*.bin")}

    copied = twice(setup, copy)
    assert copied == {key.removeprefix("rc/"): data for key, data in files.items()}


def test_pyarrow_reads_parquet(setup: Setup, table: pa.Table):
    endpoint = urlparse(setup.gateway.endpoint)
    fs = pyarrow.fs.S3FileSystem(
        access_key="full",
        secret_key=SECRETS["full"],
        endpoint_override=endpoint.netloc,
        scheme="http",
        region="us-east-1",
    )
    path = f"{setup.bucket}/data/bars.parquet"
    assert twice(setup, lambda: pq.read_table(path, filesystem=fs)).equals(table)
    columns = pq.read_table(path, filesystem=fs, columns=["price"])
    assert columns.column("price").equals(table.column("price"))


def test_polars_reads_parquet_with_its_own_client(setup: Setup, table: pa.Table):
    options = {
        "aws_access_key_id": "full",
        "aws_secret_access_key": SECRETS["full"],
        "aws_endpoint_url": setup.gateway.endpoint,
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    url = f"s3://{setup.bucket}/data/bars.parquet"
    frame = twice(setup, lambda: pl.read_parquet(url, storage_options=options).to_arrow())
    assert frame.select(["ts", "price", "noise"]).cast(table.schema).equals(table)
    assert pl.scan_parquet(url, storage_options=options).select(pl.len()).collect().item() == len(
        table
    )


def test_s3fs_reads_lists_and_writes(setup: Setup, table: pa.Table):
    fs = s3fs.S3FileSystem(
        key="full",
        secret=SECRETS["full"],
        endpoint_url=setup.gateway.endpoint,
        client_kwargs={"region_name": "us-east-1"},
        use_listings_cache=False,
    )
    path = f"{setup.bucket}/data/bars.parquet"
    raw = boto3.client("s3").get_object(Bucket=setup.bucket, Key="data/bars.parquet")["Body"]
    assert twice(setup, lambda: fs.cat(path)) == raw.read()
    assert fs.cat_file(path, start=100, end=200) == fs.cat(path)[100:200]
    assert f"{setup.bucket}/data/bars.parquet" in fs.ls(f"{setup.bucket}/data")
    fs.pipe(f"{setup.bucket}/fsspec/out.txt", b"written by s3fs")
    stored = boto3.client("s3").get_object(Bucket=setup.bucket, Key="fsspec/out.txt")
    assert stored["Body"].read() == b"written by s3fs"


def test_duckdb_reads_parquet_with_httpfs(setup: Setup, table: pa.Table):
    endpoint = urlparse(setup.gateway.endpoint).netloc
    extension = (
        Path(duckdb_extension_httpfs.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "httpfs.duckdb_extension"
    )

    def connect(secret: str) -> duckdb.DuckDBPyConnection:
        # Without DuckDB's own file cache, the second read must come through the gateway.
        db = duckdb.connect(
            config={"autoinstall_known_extensions": False, "enable_external_file_cache": False}
        )
        db.execute(f"LOAD '{extension}'")
        db.execute(
            f"CREATE SECRET gw (TYPE s3, KEY_ID 'full', SECRET '{secret}', REGION 'us-east-1', "
            f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)"
        )
        return db

    url = f"s3://{setup.bucket}/data/bars.parquet"
    db = connect(SECRETS["full"])
    query = f"SELECT ts, price, noise FROM '{url}' ORDER BY ts"
    assert db.execute(query).to_arrow_table().cast(table.schema).equals(table)
    origin_gets, gateway_gets = setup.origin_gets(), gets(setup)
    assert db.execute(query).to_arrow_table().cast(table.schema).equals(table)
    assert gets(setup) > gateway_gets, "the second read did not reach the gateway"
    assert setup.origin_gets() == origin_gets, "the second read went to the origin"
    assert db.execute(f"SELECT count(*) FROM '{url}'").fetchone() == (len(table),)
    with pytest.raises(duckdb.HTTPException, match="403"):
        connect("a-wrong-secret-key-01").execute(f"SELECT count(*) FROM '{url}'")
