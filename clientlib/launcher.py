"""Starting ringcache's daemons on this machine as child processes, and stopping them.

What ``ringcache-demo`` runs its cluster with: a real etcd, real ``cachenode`` and
``mountd`` processes on free loopback ports, each with its log file, stopped by signal
however the command that started them ends (:class:`ProcessGroup`). The test suite and
the benchmarks start their clusters with it too (and add their own tools from
``testkit``), so what they exercise is what a user gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from clientlib.auth import Credentials
from clientlib.etcd import EtcdTarget

__all__ = [
    "STOP_SIGNALS",
    "Etcd",
    "EtcdTLS",
    "Gateway",
    "Mount",
    "Node",
    "Process",
    "ProcessGroup",
    "Stopped",
    "free_port",
    "http_answers",
    "http_ok",
    "local_get",
    "mounted",
    "start_etcd",
    "start_gateway",
    "start_mount",
    "start_node",
    "wait_until",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; :class:`TimeoutError` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def local_get(url: str, timeout: float = 5, headers: dict[str, str] | None = None) -> bytes:
    """GET a URL of a local test server; TLS certificates are not checked (self-signed)."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
        return bytes(resp.read())


def http_ok(url: str, cert: Path | None = None, key: Path | None = None) -> bool:
    """Whether ``url`` answers 200 (TLS unchecked; ``cert``/``key``: a client certificate)."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    if context is not None and cert and key:
        context.load_cert_chain(cert, key)
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
        """Start the command in a session of its own, output to ``log_path``."""
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
        for group in _active_groups:
            group.processes.append(self)
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


#: What ends a command that started children: Ctrl-C, ``kill``/``timeout``/a process
#: manager, and a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_active_groups: list[ProcessGroup] = []


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by a :class:`ProcessGroup` when a stop signal arrives.

    A ``KeyboardInterrupt`` so that it ends ``time.sleep``, blocking waits and
    ``asyncio.run`` the way Ctrl-C does (asyncio lets no other exception out of a
    callback). ``signum`` is the signal; the conventional exit status is ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ProcessGroup:
    """The children of a command, stopped however the command ends.

    Children run in sessions of their own (a Ctrl-C or a hang-up of the terminal does not
    reach them), so the command must stop them itself. Within ``with ProcessGroup():``
    every :class:`Process` started (even one whose start is cut short) is recorded, and
    SIGINT, SIGTERM and SIGHUP raise :class:`Stopped` in the main thread. On the way out,
    normal or not, every recorded process is stopped, newest first (a :class:`Mount`
    unmounts), each with SIGTERM and then SIGKILL after its timeout; a repeated signal
    meanwhile is ignored, so it cannot cut the stop short.
    """

    def __init__(self) -> None:
        self.processes: list[Process] = []
        self._saved: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> ProcessGroup:
        _active_groups.append(self)
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._saved[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        _active_groups.remove(self)
        for sig in self._saved:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop()
        finally:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)

    @staticmethod
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)

    def stop(self) -> None:
        """Stop every process of the group, newest first."""
        while self.processes:
            self.processes.pop().stop()


@dataclass
class Etcd(Process):
    """A local etcd; with TLS, ``ca`` signed its certificate and the client certificate
    ``client_cert``/``client_key``; with authentication on, ``users`` holds the password
    of each user (``testkit.start_etcd`` adds ``root`` and ``ringcache``)."""

    url: str = ""
    peer_port: int = 0
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def client_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def wait_healthy(self, timeout: float = 20) -> None:
        """Wait until etcd answers ``/health``; stop it and say why if it never does."""
        try:
            wait_until(lambda: http_ok(self.url + "/health", self.client_cert, self.client_key),
                       timeout, "etcd to start")  # fmt: skip
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"etcd did not start:\n{self.log_tail()}") from None

    def restart(self) -> None:
        """Stop and start again on the same data, ports and certificates (etcd forgets
        its auth tokens: clients must authenticate again)."""
        self.stop()
        self.start()
        self.wait_healthy()

    def target(self, user: str | None = None, *, cert: bool = False) -> EtcdTarget:
        """How a client reaches this etcd: its CA, and ``user``'s password or the client
        certificate if asked for."""
        return EtcdTarget(
            self.url,
            ca=self.ca,
            cert=self.client_cert if cert else None,
            key=self.client_key if cert else None,
            user=user,
            password=self.users[user] if user else None,
        )

    def flags(self, user: str | None = None, *, cert: bool = False) -> list[str]:
        """The ``--etcd*`` flags of :meth:`target` (the password as a file next to the log)."""
        out = ["--etcd", self.url]
        if self.ca:
            out += ["--etcd-ca", str(self.ca)]
        if cert and self.client_cert and self.client_key:
            out += ["--etcd-cert", str(self.client_cert), "--etcd-key", str(self.client_key)]
        if user:
            secret = self.log_path.parent / f"etcd-password-{user}"
            secret.write_text(self.users[user] + "\n")
            secret.chmod(0o600)
            out += ["--etcd-user", user, "--etcd-password-file", str(secret)]
        return out


@dataclass(frozen=True)
class EtcdTLS:
    """The PEM files of an etcd that serves clients over TLS: its server certificate and
    key, the CA that signed them, and a client certificate of that CA (its common name is
    the etcd user); ``client_cert_auth`` makes etcd demand such a certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cert_auth: bool = False


def start_etcd(
    workdir: Path, client: int | None = None, peer: int | None = None, *, tls: EtcdTLS | None = None
) -> Etcd:
    """Start a single-member etcd on loopback (free ports unless given), data in ``workdir``,
    and wait until it answers; ``tls`` serves clients over TLS with those certificates."""
    etcd_bin = shutil.which("etcd") or "/usr/bin/etcd"
    client, peer = client or free_port(), peer or free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{client}"
    tls_flags: list[str] = []
    if tls is not None:
        tls_flags = ["--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key)]
        if tls.client_cert_auth:
            tls_flags += ["--client-cert-auth", "--trusted-ca-file", str(tls.ca)]
    proc = Etcd(
        "etcd",
        [
            etcd_bin,
            "--name",
            "ringcache-local",
            "--data-dir",
            str(workdir / "etcd-data"),
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
            *tls_flags,
        ],
        workdir / "etcd.log",
        url=url,
        peer_port=peer,
        ca=tls.ca if tls else None,
        client_cert=tls.client_cert if tls else None,
        client_key=tls.client_key if tls else None,
    )
    proc.start()
    proc.wait_healthy()
    return proc


@dataclass
class Node(Process):
    """A ``cachenode`` process: where it listens, its cache dir, its id and secret."""

    addr: str = ""
    cache_dir: Path = Path()
    scheme: str = "http"
    #: The node's id (read from its /v1/stats once it is up): signed requests name it.
    node_id: str = ""
    #: The cluster secret the node was started with, if any.
    token_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.addr}"

    def get(self, path: str) -> bytes:
        """GET ``path`` of this node, signed with the cluster secret if it has one."""
        headers = {}
        if self.token_file is not None:
            credentials = Credentials.from_file(self.token_file)
            headers = credentials.headers("GET", path, node=self.node_id)
        return local_get(self.url + path, headers=headers)


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
        token_file=Path(extra[extra.index("--token-file") + 1])
        if extra and "--token-file" in extra
        else None,
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
        node.node_id = json.loads(local_get(node.url + "/v1/stats"))["id"]
    return node


def mounted(path: Path) -> bool:
    """Whether something is mounted on ``path``, by the kernel's mount table: unlike
    ``os.path.ismount``, also true of a FUSE mount whose daemon died (its stat fails)."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as table:
        for line in table:
            fields = line.split()
            # The table escapes space, tab, newline and backslash as octal (\040).
            if re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]) == target:
                return True
    return False


@dataclass
class Mount(Process):
    """A ``mountd --foreground`` process and its mount point."""

    path: Path = Path()
    metrics_url: str = ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """Unmount (SIGTERM makes mountd unmount cleanly), then make sure it is gone:
        a mount whose mountd died (SIGKILL) is detached with ``fusermount3 -u -z``."""
        code = super().stop(timeout)
        if mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        return code


def start_mount(
    source: str,
    path: Path,
    etcd_url: str,
    cluster: str,
    *extra: str,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Mount:
    """Start ``mountd SOURCE PATH`` in the foreground and wait until ``path`` is mounted
    (``env``: mountd's whole environment, for example another ``AWS_ENDPOINT_URL``)."""
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
        f"mountd-{path.name}",
        cmd,
        log,
        env=env,
        path=path,
        metrics_url=f"http://127.0.0.1:{port}/metrics",
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


@dataclass
class Gateway(Process):
    """An ``s3gate`` process: its S3 endpoint and its metrics URL."""

    endpoint: str = ""
    metrics_url: str = ""


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: an S3 error is an answer)."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def start_gateway(
    etcd_url: str,
    cluster: str,
    keys: Path,
    *extra: str,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> Gateway:
    """Start ``s3gate`` on a free loopback port (metrics on another) and wait until it
    answers (``env``: its whole environment, for example another ``AWS_ENDPOINT_URL``)."""
    port, metrics = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "s3gate", "--listen", f"127.0.0.1:{port}", "--etcd", etcd_url,
        "--cluster", cluster, "--keys", str(keys), "--metrics-listen", f"127.0.0.1:{metrics}",
        *extra,
    ]  # fmt: skip
    gateway = Gateway(
        f"s3gate-{port}",
        cmd,
        log_path,
        env=env,
        endpoint=f"http://127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{metrics}/metrics",
    )
    gateway.start()
    try:
        wait_until(lambda: http_answers(gateway.endpoint) or not gateway.alive(), 30, "s3gate")
    except TimeoutError:
        gateway.stop()
        raise
    if not gateway.alive():
        raise RuntimeError(f"s3gate exited at start:\n{gateway.log_tail()}")
    return gateway
