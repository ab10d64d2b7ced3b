"""Fixtures of the S3 gateway tests: per module, one cluster and one ``s3gate`` process.

:meth:`Setup.origin_gets` counts the object reads that went to the origin (from the nodes
and from the gateway itself, by their ``ringcache_origin_requests_total{op="get"}``), so a
test can tell a read served by the cache from one that was not. The cluster runs with a
secret; the keys file has a key that reads and writes the whole bucket and the gateway's
directory bucket (``full``), and one that reads only ``public/`` of the bucket (``reader``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from clientlib.auth import READ, WRITE, create_token, load_secret
from clientlib.launcher import Etcd, Gateway, local_get, start_gateway
from testkit import metric_sum
from tests.conftest import Cluster

#: The bucket each module's gateway serves from a directory (``Setup.root/local-bucket``).
LOCAL = "local-files"
SECRETS = {"full": "full-secret-key-0123", "reader": "reader-secret-key-0123"}


def s3_client(  # type: ignore[no-untyped-def]
    endpoint: str, access_key: str, secret: str | None = None, signature_version: str = "s3v4"
):
    """A boto3 S3 client of the gateway at ``endpoint`` signing as ``access_key``."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret or SECRETS.get(access_key, "x" * 20),
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            signature_version=signature_version,
            retries={"max_attempts": 1},
        ),
    )


def make_token(secret: Path, scopes: list[str], tenant: str, rights: frozenset[str]) -> str:
    """A token as ``cachectl token create`` makes it (in this process: it is quicker)."""
    return create_token(load_secret(secret), scopes, tenant, rights=rights)


@dataclass
class Setup:
    """One module's cluster, gateway and bucket."""

    cluster: Cluster
    gateway: Gateway
    bucket: str
    root: Path
    keys: Path
    env: dict[str, str]

    def client(self, access_key: str = "full", secret: str | None = None):  # type: ignore[no-untyped-def]
        return s3_client(self.gateway.endpoint, access_key, secret)

    def metric(self, name: str, labels: str = "") -> float:
        """A sample of the gateway's /metrics."""
        return metric_sum(local_get(self.gateway.metrics_url).decode(), name, labels)

    def origin_gets(self) -> float:
        """Object reads sent to the origin so far, by the nodes and by the gateway."""
        label = 'op="get"'
        return self.cluster.metric("ringcache_origin_requests_total", label) + self.metric(
            "ringcache_origin_requests_total", label
        )

    def start_gateway(self, *extra: str) -> Gateway:
        """Another gateway on the same cluster (stopped by the caller)."""
        return start_gateway(
            self.cluster.etcd.url,
            self.cluster.name,
            self.keys,
            *extra,
            log_path=self.root / f"s3gate-{len(list(self.root.glob('s3gate*')))}.log",
            env=self.env,
        )


@contextlib.contextmanager
def running(
    etcd: Etcd,
    name: str,
    root: Path,
    bucket: str,
    env: dict[str, str],
    node_flags: list[str],
    *gateway_flags: str,
) -> Iterator[Setup]:
    """Two nodes and a gateway (with ``root/keys.toml``) of the cluster ``name``, stopped
    when the block ends."""
    cluster = Cluster(etcd, name, root)
    keys = root / "keys.toml"
    gateway = None
    try:
        for _ in range(2):
            cluster.add(extra=node_flags, env=env)
        gateway = start_gateway(
            etcd.url, name, keys, *gateway_flags, log_path=root / "s3gate.log", env=env
        )
        yield Setup(cluster, gateway, bucket, root, keys, env)
    finally:
        if gateway is not None:
            gateway.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def setup(
    etcd: Etcd, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("s3gate")
    suffix = f"{os.getpid()}-{root.name[-2:].strip('_')}"
    bucket = f"gw-{suffix}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    secret = root / "cluster.secret"
    secret.write_text(os.urandom(24).hex())
    local = root / "local-bucket"
    local.mkdir()
    both = [f"s3://{bucket}", f"file://{local}"]
    full = make_token(secret, both, "full", frozenset({READ, WRITE}))
    reader = make_token(secret, [f"s3://{bucket}/public"], "reader", frozenset({READ}))
    (root / "keys.toml").write_text(
        f'[[keys]]\naccess_key = "full"\nsecret_key = "{SECRETS["full"]}"\ntoken = "{full}"\n'
        f'[[keys]]\naccess_key = "reader"\nsecret_key = "{SECRETS["reader"]}"\n'
        f'token = "{reader}"\n'
    )
    (root / "anonymous.token").write_text(reader)
    with running(
        etcd, f"gw{suffix}", root, bucket, dict(os.environ), ["--token-file", str(secret)],
        "--bucket", f"{LOCAL}=file://{local}",
    ) as setup:  # fmt: skip
        yield setup
