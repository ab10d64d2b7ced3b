"""A throwaway ringcache cluster on this machine: etcd and cache nodes as processes.

The demo (``ringcache-demo``), the test suite and the benchmarks all start their clusters
with this module, so what the tests exercise is exactly what a user gets: real etcd,
real ``cachenode`` processes on free loopback ports, stopped by signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

__all__ = [
    "Etcd",
    "Mount",
    "Node",
    "Process",
    "S3Proxy",
    "free_port",
    "local_get",
    "start_etcd",
    "start_mount",
    "start_node",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def local_get(url: str, timeout: float = 5) -> bytes:
    """GET a URL of a local test server; TLS certificates are not checked (self-signed)."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return bytes(resp.read())


def http_ok(url: str) -> bool:
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Process:
    """A child process with its log file; stopped with :meth:`stop` (SIGTERM, then KILL)."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Etcd(Process):
    url: str = ""
    peer_port: int = 0

    @property
    def client_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def start_etcd(workdir: Path, client: int | None = None, peer: int | None = None) -> Etcd:
    """Start a single-member etcd on loopback (free ports unless given), data in ``workdir``."""
    etcd_bin = shutil.which("etcd") or "/usr/bin/etcd"
    client, peer = client or free_port(), peer or free_port()
    url = f"http://127.0.0.1:{client}"
    data = workdir / "etcd-data"
    proc = Etcd(
        "etcd",
        [
            etcd_bin,
            "--name",
            "ringcache-local",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"ringcache-local=http://127.0.0.1:{peer}",
            "--log-level",
            "warn",
        ],
        workdir / "etcd.log",
        url=url,
        peer_port=peer,
    )
    proc.start()
    try:
        wait_until(lambda: http_ok(url + "/health"), 20, "etcd to start")
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"etcd did not start:\n{proc.log_tail()}") from None
    return proc


@dataclass
class Node(Process):
    addr: str = ""
    cache_dir: Path = Path()
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.addr}"


def start_node(
    etcd_url: str,
    cluster: str,
    cache_dir: Path,
    *,
    size: str = "1GiB",
    port: int | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Node:
    """Start one ``cachenode`` process and wait until it answers ``/healthz``."""
    port = port or free_port()
    addr = f"127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "cachenode",
        "--listen",
        addr,
        "--cache-dir",
        f"{cache_dir}:{size}",
        "--etcd",
        etcd_url,
        "--cluster",
        cluster,
        "--drain-grace",
        "0.5",
        *(extra or []),
    ]
    node = Node(
        f"node-{port}",
        cmd,
        cache_dir.parent / f"{cache_dir.name}.log",
        env=env,
        addr=addr,
        cache_dir=cache_dir,
        scheme="https" if "--tls-cert" in (extra or []) else "http",
    )
    node.start()
    if wait:
        try:
            wait_until(lambda: http_ok(node.url + "/healthz") or not node.alive(), 30, "cachenode")
        except TimeoutError:
            node.stop()
            raise
        if not node.alive():
            raise RuntimeError(f"cachenode exited at start:\n{node.log_tail()}")
    return node


@dataclass
class Mount(Process):
    """A ``mountd --foreground`` process and its mount point."""

    path: Path = Path()
    metrics_url: str = ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """Unmount (SIGTERM makes mountd unmount cleanly), then make sure it is gone."""
        code = super().stop(timeout)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        return code


def start_mount(
    source: str, path: Path, etcd_url: str, cluster: str, *extra: str, log_path: Path | None = None
) -> Mount:
    """Start ``mountd SOURCE PATH`` in the foreground and wait until ``path`` is mounted."""
    path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mountd",
        source,
        str(path),
        "--etcd",
        etcd_url,
        "--cluster",
        cluster,
        "--foreground",
        "--metrics-listen",
        f"127.0.0.1:{port}",
        *extra,
    ]
    log = log_path or path.parent / f"{path.name}.log"
    mount = Mount(
        f"mountd-{path.name}", cmd, log, path=path, metrics_url=f"http://127.0.0.1:{port}/metrics"
    )
    mount.start()
    try:
        wait_until(lambda: os.path.ismount(path) or not mount.alive(), 30, f"mount at {path}")
    except TimeoutError:
        mount.stop()
        raise
    if not mount.alive():
        raise RuntimeError(f"mountd exited at start:\n{mount.log_tail()}")
    return mount


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


async def forward(session: ClientSession, upstream: str, request: web.Request) -> web.Response:
    """``request`` as ``upstream`` answers it (test and benchmark proxies in front of S3)."""
    from aiohttp import web

    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    async with session.request(
        request.method, upstream + request.path_qs, headers=headers, data=await request.read()
    ) as answer:
        body = await answer.read()
        skip = ("transfer-encoding", "connection")
        if request.method != "HEAD":  # aiohttp sets the length of a body it sends
            skip += ("content-length",)
        out = {k: v for k, v in answer.headers.items() if k.lower() not in skip}
        return web.Response(status=answer.status, body=body, headers=out)


class S3Proxy:
    """A reverse proxy in front of an S3 endpoint that delays or throttles requests.

    Cloud object storage has tens of milliseconds to the first byte and throttles bursts
    with ``503 SlowDown``; a loopback S3 (moto) has neither. Nodes pointed at this proxy
    (``AWS_ENDPOINT_URL``) see ``delay`` seconds before every answer, and the first
    ``fail_gets`` GETs (every GET if negative) answered with 503 SlowDown.
    """

    def __init__(self, upstream: str, delay: float = 0.0, fail_gets: int = 0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.fail_gets = fail_gets
        self.failures = 0
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> str:
        """Serve on a free loopback port; returns the endpoint URL."""
        from aiohttp import ClientSession, web

        session = ClientSession(auto_decompress=False)
        self._session = session

        async def handle(request: web.Request) -> web.Response:
            await asyncio.sleep(self.delay)
            if request.method == "GET" and (self.fail_gets < 0 or self.failures < self.fail_gets):
                self.failures += 1
                return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
            return await forward(session, self.upstream, request)

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
