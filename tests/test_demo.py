"""The README's first command: the demo runs to completion and prints a hit rate."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_demo_runs_the_main_job_and_prints_the_hit_rate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from clientlib.demo import demo_main; demo_main()",
         "--workdir", str(tmp_path), "--days", "5"],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "warmup      8 blocks fetched" in out
    assert "backtest    read 8 CSVs" in out, out  # through a real FUSE mount
    match = re.search(r"hit rate    ([0-9.]+)%: (\d+) misses .*?, (\d+) hits", out)
    assert match, out
    assert float(match[1]) == 50.0 and match[2] == match[3] == "8"
    assert "/dashboard" in out


def _children(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` (from /proc): pid -> its start time, so a pid
    reused by an unrelated process later is not mistaken for a survivor."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                parents[int(entry)] = int(fields[1])
                started[int(entry)] = fields[19]
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = started[child]
                todo.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name
)
def test_demo_keep_stops_every_child_and_unmounts_on_a_signal(tmp_path, sig):
    out = tmp_path / "demo.out"
    with out.open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "-c", "from clientlib.demo import demo_main; demo_main()",
             "--workdir", str(tmp_path / "w"), "--days", "2", "--keep"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    mnt = tmp_path / "w" / "mnt"
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while "running; Ctrl-C" not in out.read_text():
            assert demo.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        assert _mounted(mnt), out.read_text()
        children = _children(demo.pid)
        # etcd, three cache nodes and mountd at least
        assert len(children) >= 5, (children, out.read_text())
        demo.send_signal(sig)
        assert demo.wait(60) == 128 + sig, out.read_text()  # as a shell reports the signal
        left = [pid for pid, started in children.items() if _alive(pid, started)]
        assert left == [], f"{sig.name} left children {left}:\n{out.read_text()}"
        assert not _mounted(mnt), f"{sig.name} left {mnt} mounted"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid, started in children.items():
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
