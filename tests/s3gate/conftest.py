"""Fixtures of the S3 gateway tests: per module, one cluster and one ``s3gate`` process.

The nodes and the gateway reach moto through an :class:`testkit.S3Proxy` that counts the
GETs it forwards, so a test can tell a read served by the cache (no origin GET) from one
that went to the origin. The cluster runs with a secret; the keys file has a key that
reads and writes the whole bucket (``full``) and one that reads only ``public/``
(``reader``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from clientlib.launcher import Etcd, Gateway, local_get, start_gateway
from testkit import S3Proxy, metric_sum
from tests.conftest import Cluster, cachectl

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


def make_token(secret: Path, *args: str) -> str:
    """A token from the real ``cachectl token create`` (``args``: its flags)."""
    result = cachectl("--token-file", str(secret), "token", "create", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


@dataclass
class Setup:
    """One module's cluster, gateway and bucket, and the counting proxy to the origin."""

    cluster: Cluster
    gateway: Gateway
    proxy: S3Proxy
    bucket: str
    root: Path
    secret: Path
    keys: Path
    env: dict[str, str]

    def client(self, access_key: str = "full", secret: str | None = None):  # type: ignore[no-untyped-def]
        return s3_client(self.gateway.endpoint, access_key, secret)

    def metric(self, name: str, labels: str = "") -> float:
        """A sample of the gateway's /metrics."""
        return metric_sum(local_get(self.gateway.metrics_url).decode(), name, labels)

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


@pytest.fixture(scope="module")
def origin_proxy(s3_endpoint: str) -> Iterator[S3Proxy]:
    """The counting proxy, on an event loop of its own: the tests call boto3, which
    blocks, and the proxy must answer the nodes meanwhile."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="s3proxy", daemon=True)
    thread.start()
    proxy = S3Proxy(s3_endpoint)
    asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(30)
    yield proxy
    asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def setup(
    etcd: Etcd, origin_proxy: S3Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("s3gate")
    name = f"gw{os.getpid()}-{root.name[-2:].strip('_')}"
    bucket = f"gw-{os.getpid()}-{root.name[-2:].strip('_')}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    secret = root / "cluster.secret"
    secret.write_text(os.urandom(24).hex())
    env = {**os.environ, "AWS_ENDPOINT_URL": origin_proxy.url}
    cluster = Cluster(etcd, name, root)
    gateway = None
    try:
        for _ in range(2):
            cluster.add(extra=["--token-file", str(secret)], env=env)
        full = make_token(secret, "--scope", f"s3://{bucket}", "--write", "--tenant", "full")
        reader = make_token(secret, "--scope", f"s3://{bucket}/public", "--tenant", "reader")
        keys = root / "keys.toml"
        keys.write_text(
            f'[[keys]]\naccess_key = "full"\nsecret_key = "{SECRETS["full"]}"\ntoken = "{full}"\n'
            f'[[keys]]\naccess_key = "reader"\nsecret_key = "{SECRETS["reader"]}"\n'
            f'token = "{reader}"\n'
        )
        (root / "anonymous.token").write_text(reader)
        gateway = start_gateway(etcd.url, name, keys, log_path=root / "s3gate.log", env=env)
        yield Setup(cluster, gateway, origin_proxy, bucket, root, secret, keys, env)
    finally:
        if gateway is not None:
            gateway.stop()
        cluster.stop()
