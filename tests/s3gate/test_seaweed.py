"""The gateway over SeaweedFS, a real S3 server (not moto), on a cluster without tokens:
keys without a ``token`` read and write everything. Basic reads, writes and listings with
boto3: exact bytes, second reads and written objects served by the cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from clientlib.launcher import Etcd
from testkit import Seaweed, start_seaweed
from tests.s3gate.conftest import SECRETS, Setup, running

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def weed_setup(
    etcd: Etcd, seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("s3gate-weed")
    bucket = f"weed-{os.getpid()}"
    seaweed.client().create_bucket(Bucket=bucket)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": seaweed.endpoint,
        "AWS_ACCESS_KEY_ID": "seaweed",
        "AWS_SECRET_ACCESS_KEY": "seaweed",
    }
    (root / "keys.toml").write_text(
        f'[[keys]]\naccess_key = "full"\nsecret_key = "{SECRETS["full"]}"\n'
    )
    with running(etcd, f"weed{os.getpid()}", root, bucket, env, []) as setup:
        yield setup


def test_reads_and_writes_through_the_gateway_over_seaweedfs(weed_setup: Setup, seaweed: Seaweed):
    setup, origin = weed_setup, seaweed.client()
    data = os.urandom(9 * MiB + 17)
    origin.put_object(Bucket=setup.bucket, Key="in/obj.bin", Body=data)
    gate = setup.client()
    cold = setup.origin_gets()
    assert gate.get_object(Bucket=setup.bucket, Key="in/obj.bin")["Body"].read() == data
    assert setup.origin_gets() > cold
    warm = setup.origin_gets()
    part = gate.get_object(Bucket=setup.bucket, Key="in/obj.bin", Range="bytes=4194300-4194400")
    assert part["Body"].read() == data[4194300:4194401]
    assert gate.get_object(Bucket=setup.bucket, Key="in/obj.bin")["Body"].read() == data
    assert setup.origin_gets() == warm

    written = os.urandom(5 * MiB + 3)
    gate.put_object(Bucket=setup.bucket, Key="out/new.bin", Body=written)
    assert origin.get_object(Bucket=setup.bucket, Key="out/new.bin")["Body"].read() == written
    before = setup.origin_gets()
    assert gate.get_object(Bucket=setup.bucket, Key="out/new.bin")["Body"].read() == written
    assert setup.origin_gets() == before
    listed = gate.list_objects_v2(Bucket=setup.bucket, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["in/", "out/"]
