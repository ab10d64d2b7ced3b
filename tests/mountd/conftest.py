"""Fixtures that mount for real: ``mountd --foreground`` as a separate process.

The mount reads through a cluster from the top-level fixtures (etcd, moto_server,
cachenode processes) and is unmounted at teardown, with SIGTERM and, if that failed,
``fusermount3 -u -z`` so a broken test never leaves a dead mount behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clientlib.localcluster import Process, free_port
from tests.conftest import Cluster


@dataclass
class Mount:
    """One running mountd: its mount point, process and metrics endpoint."""

    path: Path
    proc: Process
    metrics_url: str

    def metric(self, name: str, labels: str = "") -> float:
        """A sample of the mount's client metrics (summed over label sets if unspecified)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            metric, _, rest = sample.partition("{")
            if metric == name and (not labels or labels in rest):
                total += float(value)
        return total

    def unmount(self) -> None:
        self.proc.stop(timeout=20)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)


def start_mount(cluster: Cluster, source: str, root: Path, *extra: str) -> Mount:
    """Start mountd on a fresh directory under ``root`` and wait until it is mounted."""
    index = len(list(root.glob("mnt*")))
    path = root / f"mnt{index}"
    path.mkdir(parents=True)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mountd",
        source,
        str(path),
        "--etcd",
        cluster.etcd.url,
        "--cluster",
        cluster.name,
        "--foreground",
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--attr-ttl",
        "1",
        "--log-level",
        "DEBUG",
        *extra,
    ]
    proc = Process(f"mountd-{index}", cmd, root / f"mountd{index}.log").start()
    mount = Mount(path, proc, f"http://127.0.0.1:{port}/metrics")
    deadline = time.monotonic() + 30
    while not os.path.ismount(path):
        if not proc.alive():
            raise RuntimeError(f"mountd exited at start:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            mount.unmount()
            raise TimeoutError(f"mountd did not mount {path}:\n{proc.log_tail()}")
        time.sleep(0.05)
    return mount


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Factory: ``mount(cluster, source, *flags)`` -> a live :class:`Mount`."""
    mounts: list[Mount] = []

    def make(cluster: Cluster, source: str, *extra: str) -> Mount:
        m = start_mount(cluster, source, tmp_path / "mounts", *extra)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.unmount()
