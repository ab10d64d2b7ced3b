"""Fixtures that start the real parts on loopback: etcd, an S3 endpoint, cache nodes.

etcd and moto_server are shared by the session (each test takes its own cluster name and
bucket, so tests cannot see each other's state); cache nodes belong to one test and are
stopped when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import boto3
import pytest

from clientlib import CacheClient
from clientlib.launcher import Etcd, Node, Process, free_port, http_ok, start_node, wait_until
from testkit import S3Proxy, metric_sum, start_etcd

_counter = itertools.count()


def _no_skips(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With RINGCACHE_NO_SKIPS set (CI, which installs every tool a test may need), a
    skipped or xfailed test, or a skipped module, is a failure: a skip there hides a test."""
    if not os.environ.get("RINGCACHE_NO_SKIPS"):
        return
    if report.skipped or hasattr(report, "wasxfail"):
        why = getattr(report, "wasxfail", "") or report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped or xfailed with RINGCACHE_NO_SKIPS set: {why}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    _no_skips(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    outcome = yield
    _no_skips(outcome.get_result())


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ringcache")


@pytest.fixture(scope="session", autouse=True)
def local_cache_root(workdir: Path) -> Iterator[Path]:
    """Where the mounts a test starts keep their default local disk tier: under the
    session's directory, not the machine's /var/cache (mountd reads the variable)."""
    root = workdir / "local-cache"
    old = os.environ.get("RINGCACHE_LOCAL_CACHE_ROOT")
    os.environ["RINGCACHE_LOCAL_CACHE_ROOT"] = str(root)
    yield root
    if old is None:
        del os.environ["RINGCACHE_LOCAL_CACHE_ROOT"]
    else:
        os.environ["RINGCACHE_LOCAL_CACHE_ROOT"] = old


@pytest.fixture(scope="session")
def etcd(workdir: Path) -> Iterator[Etcd]:
    proc = start_etcd(workdir / "etcd")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def s3_endpoint(workdir: Path) -> Iterator[str]:
    """moto_server, a real S3 HTTP API; boto3 in tests and nodes reach it through env."""
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = Process("moto", [moto, "-H", "127.0.0.1", "-p", str(port)], workdir / "moto.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(url + "/moto-api/"), 30, "moto_server")
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield url
    proc.stop()


@pytest.fixture
def s3(s3_endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3")


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    name = f"bucket-{os.getpid()}-{next(_counter)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def cluster_name() -> str:
    return f"t{os.getpid()}-{next(_counter)}"


class Cluster:
    """Cache nodes of one test's cluster; :meth:`add` starts one more."""

    def __init__(self, etcd: Etcd, name: str, root: Path) -> None:
        self.etcd = etcd
        self.name = name
        self.root = root
        self.nodes: list[Node] = []

    def add(self, size: str = "1GiB", extra: list[str] | None = None, **kw) -> Node:  # type: ignore[no-untyped-def]
        index = len(self.nodes)
        node = start_node(
            self.etcd.url,
            self.name,
            self.root / f"node{index}",
            size=size,
            extra=["--file-root", str(self.root), *(extra or [])],
            **kw,
        )
        self.nodes.append(node)
        return node

    def restart(self, node: Node, extra: list[str] | None = None, **kw) -> Node:  # type: ignore[no-untyped-def]
        node.stop()
        port = int(node.addr.rsplit(":", 1)[1])
        new = start_node(
            self.etcd.url,
            self.name,
            node.cache_dir,
            port=port,
            extra=["--file-root", str(self.root), *(extra or [])],
            **kw,
        )
        self.nodes[self.nodes.index(node)] = new
        return new

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric over every live node (read from their /metrics)."""
        return sum(node_metric(n, name, labels) for n in self.nodes if n.alive())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A cluster secret (what a node's and an operator's --token-file hold)."""
    path = tmp_path / "cluster.secret"
    path.write_text(os.urandom(24).hex() + "\n")
    return path


async def make_token(cluster, secret: Path, scope: str, *extra: str) -> Path:  # type: ignore[no-untyped-def]
    """A token file made by the real ``cachectl token create`` (extra: its flags)."""
    result = await run_cachectl(
        "--token-file", str(secret), "token", "create", "--scope", scope, *extra
    )
    assert result.returncode == 0, result.stderr
    path = secret.parent / f"token-{time.monotonic_ns()}"
    path.write_bytes(result.stdout)
    return path


def self_signed_cert(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``where``)."""
    key, pem = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=ringcache-test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(pem)],
        check=True, capture_output=True,
    )  # fmt: skip
    return pem, key


def node_metric(node: Node, name: str, labels: str = "") -> float:
    """A sample of a node's /metrics (summed over label sets if unspecified)."""
    return metric_sum(node.get("/metrics").decode(), name, labels)


def client_metric(name: str, **labels: str) -> float:
    """A sample of this process's metrics (its CacheClients'), like :func:`metric_sum`."""
    from prometheus_client import REGISTRY, generate_latest

    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return metric_sum(generate_latest(REGISTRY).decode(), name, wanted)


@pytest.fixture
def make_cluster(
    etcd: Etcd, s3_endpoint: str, tmp_path: Path, cluster_name: str
) -> Iterator[Callable[[int], Cluster]]:
    clusters: list[Cluster] = []

    def make(count: int, **kw) -> Cluster:  # type: ignore[no-untyped-def]
        cluster = Cluster(etcd, f"{cluster_name}-{len(clusters)}", tmp_path)
        clusters.append(cluster)
        for _ in range(count):
            cluster.add(**kw)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


def cachectl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``cachectl`` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-c", "from clientlib.cli.main import main; main()", *args],
        capture_output=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


async def run_cachectl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """:func:`cachectl` without blocking the test's event loop."""
    return await asyncio.to_thread(cachectl, *args)


async def wait_ring(client: CacheClient, active: int, timeout: float = 15.0) -> None:
    """Wait until the client's ring has exactly ``active`` active nodes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(client.ring) != active:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"ring has {len(client.ring)} nodes, wanted {active}")
        await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until ``condition()`` holds: a test's next step needs a state, not a delay
    that a loaded machine can outrun."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still not so after {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., object]]:
    """Factory: a started CacheClient for a cluster, closed at the end of the test."""
    clients: list[CacheClient] = []

    async def make(cluster: Cluster, nodes: int | None = None, **kw) -> CacheClient:  # type: ignore[no-untyped-def]
        client = CacheClient(cluster.etcd.url, cluster.name, **kw)
        await client.start()
        clients.append(client)
        await wait_ring(client, len(cluster.nodes) if nodes is None else nodes)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[Etcd]:
    """An etcd of this test's own, for tests that stop or restart it."""
    proc = start_etcd(tmp_path / "private-etcd")
    yield proc
    proc.stop()


@pytest.fixture
async def faulty_s3(s3_endpoint: str) -> AsyncIterator[Callable[..., Awaitable[S3Proxy]]]:
    """``await faulty_s3(delay, fail_gets=N)``: a started :class:`testkit.S3Proxy` in
    front of moto (its endpoint is ``.url``) with ``delay`` seconds to first byte, whose
    first ``N`` GETs (all if < 0) get 503 SlowDown; its counts tell a test what its
    clients have asked of the origin so far."""
    proxies: list[S3Proxy] = []

    async def start(delay: float = 0.0, fail_gets: int = 0) -> S3Proxy:
        proxy = S3Proxy(s3_endpoint, delay, fail_gets)
        proxies.append(proxy)
        await proxy.start()
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()
