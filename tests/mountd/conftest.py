"""Fixtures that mount for real: ``mountd --foreground`` as a separate process.

The mount reads through a cluster from the top-level fixtures (etcd, moto_server,
cachenode processes) and is unmounted at teardown, with SIGTERM and, if that failed,
``fusermount3 -u -z`` so a broken test never leaves a dead mount behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clientlib.launcher import Mount as LocalMount
from clientlib.launcher import local_get
from clientlib.launcher import start_mount as start_local_mount
from testkit import metric_sum
from tests.conftest import Cluster


@dataclass
class Mount:
    """One running mountd: its mount point, process and metrics endpoint."""

    proc: LocalMount

    @property
    def path(self) -> Path:
        return self.proc.path

    @property
    def metrics_url(self) -> str:
        return self.proc.metrics_url

    def metric(self, name: str, labels: str = "") -> float:
        """A sample of the mount's client metrics (summed over label sets if unspecified)."""
        return metric_sum(local_get(self.metrics_url).decode(), name, labels)

    def unmount(self) -> None:
        self.proc.stop(timeout=20)


def start_mount(cluster: Cluster, source: str, root: Path, *extra: str) -> Mount:
    """Start mountd on a fresh directory under ``root`` and wait until it is mounted."""
    root.mkdir(parents=True, exist_ok=True)
    index = len(list(root.glob("mnt*")))
    return Mount(
        start_local_mount(
            source,
            root / f"mnt{index}",
            cluster.etcd.url,
            cluster.name,
            "--attr-ttl",
            "1",
            "--log-level",
            "DEBUG",
            *extra,
            log_path=root / f"mountd{index}.log",
        )
    )


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


@pytest.fixture
def open_mount() -> Iterator[Callable[..., Mount]]:
    """Like ``mount``, on a mount point that other users can reach (tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="ringcache-shared-", dir="/tmp"))
    root.chmod(0o755)
    mounts: list[Mount] = []

    def make(cluster, source: str, *extra: str) -> Mount:  # type: ignore[no-untyped-def]
        m = start_mount(cluster, source, root, "--allow-other", *extra)
        m.path.parent.chmod(0o755)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.unmount()
    shutil.rmtree(root, ignore_errors=True)


#: The unprivileged user tests act as (setpriv), to see what the kernel and the mount refuse.
NOBODY = 65534


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as :data:`NOBODY` with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=30,
    )


def read_twice(path: Path) -> bytes:
    """``path`` read through twice, the second time past the kernel's page cache (its
    pages dropped first, so every read reaches the mount): two streams through the file,
    after which a mount's disk tier holds its blocks (a first stream stores none)."""
    first = path.read_bytes()
    with path.open("rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        second = fh.read()
    assert second == first
    return second
