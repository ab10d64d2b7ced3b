#!/usr/bin/env python3
"""Hot block GETs: one cachenode against nginx serving the very same block bytes.

What it measures: the hit path of ``GET /v1/blocks/<id>`` (no source parameters, so a
lookup that never touches the origin) on one cachenode, against nginx (sendfile on,
access_log off) serving the blocks the node stored, as files on the same disk. A block
file of the node ends with its part checksums (clientlib.blockfile, 128 bytes for 4 MiB),
which the node never sends, so nginx serves copies of the files without them: both
answer with exactly the block's bytes.
Both are driven by ``wrk`` with the same threads, connections and duration, rotating
round-robin over ``--blocks`` hot blocks, at two block sizes:

- 4 MiB: blocks of one 64 MiB object (the cluster's default block size);
- 64 KiB: one-block objects of 64 KiB each (``bs`` is still 4 MiB; the block is short).

Everything listens on 127.0.0.1, so these are same-host numbers, not NIC-limited ones.
By default (``--pin``) every thread of the server under test runs on one core
(``--server-cpu``) and ``wrk`` on another (``--wrk-cpu``), the same for cachenode and
nginx: each server has one core to itself, as nginx with one worker has, and neither
competes with ``wrk`` for it. nginx then runs with 1 worker only; with ``--no-pin`` all
share the machine's cores, and nginx also runs with 2 workers. Ratios are to nginx with
1 worker.

What the CPU figures count: a server's CPU is its processes' user and system time
(``/proc/<pid>/stat``); the server's core is all the busy time of its core (with
``--pin``); the machine's is every core's busy time. The kernel's loopback work (TCP
receive and ACK processing, BBR's paced sends) runs on whichever core and is charged to
whichever task is current there, so a server's own figure at 4 MiB still moves by up to
2x between rounds, pinned or not, while the machine's moves by ~15%.

The servers take turns: each of ``--rounds`` rounds runs every server once per size, and
each figure reported is the median over the rounds (the range of the CPU per request is
shown beside it), so that one noisy round cannot decide a target.

Targets (issue 18): cachenode CPU per 4 MiB request <= 1.5x nginx's, and >= 1.0x nginx's
requests/s at 64 KiB (both to nginx with 1 worker).

Run it from the repository root::

    .venv/bin/python -m loadtest.bench_hot_blocks            # ~4 minutes
    .venv/bin/python -m loadtest.bench_hot_blocks --rounds 1 --duration 5 --warmup 1

Results go to ``loadtest/results/hot_blocks.json`` and ``loadtest/results/hot_blocks.md``.
Every process it starts (etcd, cachenode, nginx, wrk) is stopped on exit, error or
Ctrl-C, and its temp dir is removed (``--keep`` leaves it for a post-mortem).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cachenode.memtier import shmem_huge_pages
from clientlib.blockfile import trailer_length
from clientlib.blocks import DEFAULT_BLOCK_SIZE, block_id
from clientlib.launcher import (
    Process,
    free_port,
    start_etcd,
    start_node,
    wait_until,
)
from clientlib.urls import split_url

KiB = 1024
MiB = 1024 * KiB
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
CLUSTER = "bench-hot"

#: size label: the metric of the "ratio to nginx-1w" column
RATIO_METRIC = {"4MiB": "mib_per_s", "64KiB": "requests_per_s"}
TARGETS = {
    # size label: (metric compared, "max" or "min", bound on its ratio to nginx-1w)
    "4MiB": ("server_cpu_us_per_request", "max", 1.5),
    "64KiB": ("requests_per_s", "min", 1.0),
}


# -- the data --------------------------------------------------------------------------


@dataclass
class Block:
    id: str
    nbytes: int
    node_path: str  # /v1/blocks/<id>
    nginx_path: str  # /<id[:2]>/<file name in the cache dir>
    file: Path  # the node's block file


def make_objects(origin: Path, nblocks: int) -> dict[str, list[tuple[Path, int]]]:
    """One 4 MiB-block object of ``nblocks`` blocks, and ``nblocks`` 64 KiB objects."""
    origin.mkdir(parents=True, exist_ok=True)
    big = origin / "big.bin"
    with big.open("wb") as f:
        for _ in range(nblocks):
            f.write(os.urandom(DEFAULT_BLOCK_SIZE))
    small = []
    for n in range(nblocks):
        path = origin / f"small-{n:03d}.bin"
        path.write_bytes(os.urandom(64 * KiB))
        small.append((path, 0))
    return {"4MiB": [(big, i) for i in range(nblocks)], "64KiB": small}


def warm(node_url: str, cache_dir: Path, path: Path, index: int) -> Block:
    """GET the block once with its source parameters (a miss), then check it is a hit."""
    url = "file://" + str(path)
    origin, key = split_url(url)
    st = path.stat()
    version = f"{st.st_size}-{st.st_mtime_ns}"
    bid = block_id(origin, key, version, DEFAULT_BLOCK_SIZE, index)
    offset = index * DEFAULT_BLOCK_SIZE
    nbytes = min(DEFAULT_BLOCK_SIZE, st.st_size - offset)
    with path.open("rb") as f:
        f.seek(offset)
        want = f.read(nbytes)
    query = urlencode(
        {"src": url, "ver": version, "size": st.st_size, "bs": DEFAULT_BLOCK_SIZE, "i": index}
    )
    with urllib.request.urlopen(f"{node_url}/v1/blocks/{bid}?{query}", timeout=30) as resp:
        body = resp.read()
        result = resp.headers.get("X-Ringcache-Result")
    if body != want:
        raise RuntimeError(f"warmup of block {index} of {path}: wrong bytes ({len(body)})")
    with urllib.request.urlopen(f"{node_url}/v1/blocks/{bid}", timeout=30) as resp:
        if resp.read() != want or resp.headers.get("X-Ringcache-Result") != "hit":
            raise RuntimeError(f"block {bid} is not a hit after warmup (first: {result})")
    files = list((cache_dir / "blocks" / bid[:2]).glob(f"{bid}.*"))
    if len(files) != 1 or files[0].stat().st_size != nbytes + trailer_length(nbytes):
        raise RuntimeError(f"block file of {bid} not found in {cache_dir}: {files}")
    rel = files[0].relative_to(cache_dir / "blocks")
    return Block(bid, nbytes, f"/v1/blocks/{bid}", f"/{rel.as_posix()}", files[0])


def nginx_root(blocks: list[Block], root: Path) -> Path:
    """Copies of the block files, at the same paths, holding just the block's bytes."""
    for b in blocks:
        copy = root / b.nginx_path.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        with b.file.open("rb") as f:
            copy.write_bytes(f.read(b.nbytes))
    return root


# -- nginx -----------------------------------------------------------------------------


def nginx_conf(workdir: Path, root: Path, port: int, workers: int) -> str:
    return f"""\
worker_processes {workers};
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
        }}
    }}
}}
"""


def start_nginx(workdir: Path, root: Path, workers: int) -> tuple[Process, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, root, port, workers))
    cmd = [NGINX, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx config test failed:\n{check.stderr}")
    proc = Process(f"nginx-{workers}w", cmd, workdir / "nginx.out").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _listening(port) or not proc.alive(), 15, "nginx")
    except TimeoutError:
        proc.stop()
        raise
    if not proc.alive():
        raise RuntimeError(f"nginx exited at start:\n{(workdir / 'error.log').read_text()}")
    return proc, url


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- wrk -------------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": KiB, "MB": MiB, "GB": 1024 * MiB, "TB": 1024 * 1024 * MiB}
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?B)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk size {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk time {text!r}")
    return float(m.group(1)) * _TIME[m.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    transfer_bytes_per_s: float
    mib_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    non_2xx: int
    server_cpu_s: float = 0.0
    #: Of server_cpu_s, the time in user space: the server's own code (the kernel's
    #: loopback work, wherever it lands, is system time), so the steady part of the figure.
    server_user_s: float = 0.0
    wrk_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    #: With pinning: all the busy time of the server's core and of wrk's core.
    server_core_cpu_s: float = 0.0
    wrk_core_cpu_s: float = 0.0
    server_core: dict[str, float] = field(default_factory=dict)
    wrk_core: dict[str, float] = field(default_factory=dict)
    raw: str = field(default="", repr=False)


def parse_wrk(out: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+[KMGT]?B) read", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tps = re.search(r"Transfer/sec:\s+([\d.]+[KMGT]?B)", out)
    if not (m and rps and tps):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    latency = {
        f"p{pct}": _ms(val)
        for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.MULTILINE)
    }
    errors: dict[str, int] = {}
    em = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if em:
        errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, em.groups()), strict=True)
        )
    nm = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    transfer = _bytes(tps.group(1))
    return WrkResult(
        requests=int(m.group(1)),
        seconds=_ms(m.group(2) + m.group(3)) / 1e3,
        requests_per_s=float(rps.group(1)),
        transfer_bytes_per_s=transfer,
        mib_per_s=transfer / MiB,
        latency_ms=latency,
        errors=errors,
        non_2xx=int(nm.group(1)) if nm else 0,
        raw=out,
    )


def lua_script(path: Path, paths: list[str]) -> Path:
    items = ",\n  ".join(json.dumps(p) for p in paths)
    path.write_text(
        f"""-- round-robin over the hot blocks (each wrk thread has its own counter)
local paths = {{
  {items}
}}
local n = 0
request = function()
  n = n % #paths + 1
  return wrk.format("GET", paths[n])
end
"""
    )
    return path


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_split(pids: list[int]) -> tuple[float, float]:
    """utime and stime of these processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / _CLK_TCK, system / _CLK_TCK


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    return sum(_cpu_split(pids))


def _core_seconds(cpu: int | None = None) -> dict[str, float]:
    """CPU time all cores (or core ``cpu``) spent since boot: ``busy`` (not idle: user,
    nice, system, irq, softirq, steal), and of that ``user`` (with nice), ``system`` and
    ``softirq``."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        label, *values = line.split()
        if label == name:
            f = [int(x) / _CLK_TCK for x in values]
            busy = sum(f[:8]) - f[3] - f[4]
            return {"busy": busy, "user": f[0] + f[1], "system": f[2], "softirq": f[6]}
    raise RuntimeError(f"no {name} line in /proc/stat")


def _busy_seconds(cpu: int | None = None) -> float:
    """CPU time all cores (or core ``cpu``) spent not idle since boot."""
    return _core_seconds(cpu)["busy"]


def pin(pids: list[int], cpu: int) -> None:
    """Keep every thread of these processes (and the threads they start) on core ``cpu``."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), {cpu})


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def run_wrk(
    url: str,
    script: Path,
    threads: int,
    connections: int,
    duration: float,
    server_pids: list[int],
    cores: tuple[int, int] | None = None,
) -> WrkResult:
    """One wrk run; also measures the CPU time the server and wrk used during it, and
    with ``cores`` (the server's, wrk's: wrk is started on its own) each core's busy
    time."""
    cmd = [
        *([] if cores is None else [TASKSET, "-c", str(cores[1])]),
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = _cpu_split(server_pids)
    busy_before = _busy_seconds()
    core_before = [_core_seconds(c) for c in cores or ()]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(duration + 60, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.returncode = -1
        after = _cpu_split(server_pids)
        server_user = after[0] - before[0]
        server_cpu = sum(after) - sum(before)
        busy = _busy_seconds() - busy_before
        core = [
            {k: v - b[k] for k, v in _core_seconds(c).items()}
            for c, b in zip(cores or (), core_before, strict=True)
        ]
        out.seek(0)
        text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk failed ({status}): {' '.join(cmd)}\n{text}")
    result = parse_wrk(text)
    result.server_cpu_s = server_cpu
    result.server_user_s = server_user
    result.wrk_cpu_s = usage.ru_utime + usage.ru_stime
    # Everything else the machine did meanwhile (other programs, and the kernel's
    # softirq work not charged to either process): a noisy-neighbour indicator.
    result.other_cpu_s = max(0.0, busy - server_cpu - result.wrk_cpu_s)
    if core:
        result.server_core = core[0]
        result.wrk_core = core[1]
        result.server_core_cpu_s = core[0]["busy"]
        result.wrk_core_cpu_s = core[1]["busy"]
    return result


# -- report ----------------------------------------------------------------------------


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's figures over its rounds: the median of each (latencies: of each
    percentile; errors and non-2xx answers: their sums)."""
    numeric = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "round"]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in numeric}
    out["latency_ms"] = {
        p: statistics.median(r["latency_ms"][p] for r in runs if p in r["latency_ms"])
        for p in runs[0]["latency_ms"]
    }
    out["errors"] = {k: sum(r["errors"].get(k, 0) for r in runs) for k in runs[0]["errors"]}
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    return out


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms * 1e3:.0f} us" if ms < 1 else f"{ms:.2f} ms"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| size | server | req/s | MiB/s | p50 | p99 | server CPU | server CPU/req "
        "| CPU/req range | server user/req | machine CPU/req | wrk CPU | other CPU "
        "| ratio to nginx-1w | target |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        ratio = r.get("ratio_to_nginx_1w")
        target = r.get("target")
        target_txt = ""
        if target:
            verdict = "PASS" if target["pass"] else "FAIL"
            bound = ("<= " if target["kind"] == "max" else ">= ") + f"{target['bound']}x"
            target_txt = f"{verdict} ({target['ratio'] or 0:.2f}x {target['metric']}, {bound})"
        per_round = [x["server_cpu_us_per_request"] for x in r.get("rounds", [r])]
        low, high = min(per_round), max(per_round)
        lines.append(
            f"| {r['size']} | {r['server']} | {r['requests_per_s']:,.0f} | {r['mib_per_s']:,.0f} "
            f"| {_fmt_ms(r['latency_ms'].get('p50'))} | {_fmt_ms(r['latency_ms'].get('p99'))} "
            f"| {r['server_cpu_pct']:.0f}% | {r['server_cpu_us_per_request']:,.0f} us "
            f"| {low:,.0f}-{high:,.0f} us | {r.get('server_user_us_per_request', 0):,.1f} us "
            f"| {r.get('machine_cpu_us_per_request', 0):,.0f} us "
            f"| {r['wrk_cpu_pct']:.0f}% | {r['other_cpu_pct']:.0f}% "
            f"| {'' if ratio is None else f'{ratio:.2f}x'} | {target_txt} |"
        )
    return head + "\n".join(lines) + "\n"


def _version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    return "?"


def environment() -> dict[str, Any]:
    import aiohttp
    import uvloop

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": uvloop.__version__,
        "nginx": _version([NGINX, "-v"]),
        "wrk": _version([WRK, "--version"]),
        "loadavg_before": os.getloadavg(),
        # The node's copies of large blocks get huge pages only where this allows them.
        "shmem_huge_pages": shmem_huge_pages(),
    }


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=16, help="hot blocks per size (default 16)")
    p.add_argument("--duration", type=float, default=6, help="seconds per wrk run (6)")
    p.add_argument("--rounds", type=int, default=3, help="turns of every server (3)")
    p.add_argument("--warmup", type=float, default=2, help="discarded wrk run first, s (2)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument("--conns-4m", type=int, default=16, help="wrk connections at 4 MiB (16)")
    p.add_argument("--conns-64k", type=int, default=64, help="wrk connections at 64 KiB (64)")
    p.add_argument("--sizes", default="4MiB,64KiB", help="comma list of 4MiB,64KiB")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default="hot_blocks", help="results file stem (hot_blocks)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each server on core --server-cpu and wrk on --wrk-cpu (default: on)",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="the servers' core (0)")
    p.add_argument("--wrk-cpu", type=int, default=1, help="wrk's core (1)")
    p.add_argument(
        "--ref-node",
        type=Path,
        default=None,
        metavar="DIR",
        help="also measure the node of the checkout DIR (a worktree of main, say) as "
        "cachenode-ref, in turns with the others: before and after in one run",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=0,
        help="after the runs, keep the node and nginx up this many seconds (profiling)",
    )
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in TARGETS:
            p.error(f"unknown size {s!r}")
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            p.error(f"{tool} is not installed")

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so the finally below stops everything.
    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    tmp = Path(tempfile.mkdtemp(prefix="ringcache-bench-hot-")).resolve()
    tmp.chmod(0o755)  # nginx workers (user nobody when started as root) must reach the files
    started: list[Process] = []
    env = environment()
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        print(f"workdir {tmp}", flush=True)
        etcd = start_etcd(tmp / "etcd")
        started.append(etcd)
        origin = tmp / "origin"
        objects = make_objects(origin, args.blocks)
        cache_dir = tmp / "cache"
        # The disk is shared with whatever else runs here: its free share is not ours.
        node_args = ["--file-root", str(origin), "--log-level", "WARNING"]
        node_args += ["--free-space-ratio", "0"]
        node = start_node(etcd.url, CLUSTER, cache_dir, size="4GiB", extra=node_args)
        started.append(node)
        print(f"cachenode {node.url} (pid {node.pid}), cache dir {cache_dir}", flush=True)
        blocks = {
            size: [warm(node.url, cache_dir, path, i) for path, i in objects[size]]
            for size in sizes
        }
        ref = None
        if args.ref_node is not None:
            # Another checkout's node (its own cluster, cache and copy of the blocks): the
            # module is found in the working directory first (python -m).
            with contextlib.chdir(args.ref_node):
                ref = start_node(
                    etcd.url, CLUSTER + "-ref", tmp / "cache-ref", size="4GiB", extra=node_args
                )
            started.append(ref)
            print(f"cachenode-ref {ref.url} (pid {ref.pid}) from {args.ref_node}", flush=True)
            for size in sizes:
                for path, i in objects[size]:
                    warm(ref.url, tmp / "cache-ref", path, i)
        root = nginx_root([b for size in sizes for b in blocks[size]], tmp / "nginx-root")
        nginx: dict[int, tuple[Process, str]] = {}
        cores = (args.server_cpu, args.wrk_cpu) if args.pin else None
        for workers in (1,) if args.pin else (1, 2):
            proc, url = start_nginx(tmp / f"nginx-{workers}w", root, workers)
            started.append(proc)
            nginx[workers] = (proc, url)
            print(f"nginx {workers}w {url} (pid {proc.pid})", flush=True)
        # Same bytes from both servers, before measuring anything.
        for size in sizes:
            b = blocks[size][0]
            bodies = []
            for base, path in ((node.url, b.node_path), (nginx[1][1], b.nginx_path)):
                with urllib.request.urlopen(base + path, timeout=30) as resp:
                    bodies.append(resp.read())
            if bodies[0] != bodies[1] or len(bodies[0]) != b.nbytes:
                raise RuntimeError(f"cachenode and nginx disagree on block {b.id}")

        servers: list[tuple[str, str, list[int], str]] = [
            ("cachenode", node.url, [node.pid], "node_path"),
            *([] if ref is None else [("cachenode-ref", ref.url, [ref.pid], "node_path")]),
            *(
                (f"nginx-{w}w", url, [proc.pid, *_children(proc.pid)], "nginx_path")
                for w, (proc, url) in nginx.items()
            ),
        ]
        if cores is not None:
            for _, _, pids, _ in servers:
                pin(pids, cores[0])
        samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for turn, size, (name, url, pids, attr) in itertools.product(
            range(args.rounds), sizes, servers
        ):
            conns = args.conns_4m if size == "4MiB" else args.conns_64k
            script = lua_script(
                tmp / f"{name}-{size}.lua", [getattr(b, attr) for b in blocks[size]]
            )
            if args.warmup > 0:
                run_wrk(url, script, args.threads, conns, args.warmup, pids, cores)
            r = run_wrk(url, script, args.threads, conns, args.duration, pids, cores)
            row = {
                "round": turn + 1,
                **{k: v for k, v in asdict(r).items() if k != "raw"},
                "server_cpu_pct": 100 * r.server_cpu_s / r.seconds,
                "wrk_cpu_pct": 100 * r.wrk_cpu_s / r.seconds,
                "other_cpu_pct": 100 * r.other_cpu_s / r.seconds,
                "server_cpu_us_per_request": 1e6 * r.server_cpu_s / max(r.requests, 1),
                "server_user_us_per_request": 1e6 * r.server_user_s / max(r.requests, 1),
                "server_core_cpu_us_per_request": 1e6 * r.server_core_cpu_s / max(r.requests, 1),
                "wrk_core_cpu_us_per_request": 1e6 * r.wrk_core_cpu_s / max(r.requests, 1),
                "machine_cpu_us_per_request": 1e6
                * (r.server_cpu_s + r.wrk_cpu_s + r.other_cpu_s)
                / max(r.requests, 1),
                "loadavg_after": os.getloadavg()[0],
            }
            samples.setdefault((size, name), []).append(row)
            cores_txt = (
                f"server core/req {row['server_core_cpu_us_per_request']:,.0f} us  "
                f"wrk core/req {row['wrk_core_cpu_us_per_request']:,.0f} us  "
                if cores is not None
                else ""
            )
            print(
                f"r{turn + 1} {size:>6} {name:<10} {r.requests_per_s:>10,.0f} req/s "
                f"{r.mib_per_s:>8,.0f} MiB/s  p50 {_fmt_ms(r.latency_ms.get('p50'))}  "
                f"p99 {_fmt_ms(r.latency_ms.get('p99'))}  server CPU "
                f"{row['server_cpu_pct']:.0f}%  wrk CPU {row['wrk_cpu_pct']:.0f}%  "
                f"other CPU {row['other_cpu_pct']:.0f}%  "
                f"CPU/req {row['server_cpu_us_per_request']:,.0f} us "
                f"(user {row['server_user_us_per_request']:,.1f})  {cores_txt}"
                f"machine/req {row['machine_cpu_us_per_request']:,.0f} us",
                flush=True,
            )
            if r.non_2xx or any(r.errors.values()):
                print(f"   !! non-2xx {r.non_2xx}, socket errors {r.errors}", flush=True)
        for size in sizes:
            conns = args.conns_4m if size == "4MiB" else args.conns_64k
            for name, *_ in servers:
                rows.append(
                    {
                        "size": size,
                        "block_bytes": blocks[size][0].nbytes,
                        "server": name,
                        "wrk": f"-t{args.threads} -c{conns} -d{args.duration:g}s --latency",
                        **median_row(samples[size, name]),
                        "rounds": samples[size, name],
                    }
                )
        if args.hold > 0:
            print(f"holding for {args.hold:g}s: node pid {node.pid}", flush=True)
            time.sleep(args.hold)
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    base = {(r["size"]): r for r in rows if r["server"] == "nginx-1w"}
    for r in rows:
        ref = base.get(r["size"])
        if ref is None:
            continue
        metric = RATIO_METRIC[r["size"]]
        r["ratio_to_nginx_1w"] = r[metric] / ref[metric] if ref[metric] else None
        if r["server"] == "cachenode":
            r["ratio_to_nginx_2w"] = next(
                (
                    r[metric] / x[metric]
                    for x in rows
                    if x["size"] == r["size"] and x["server"] == "nginx-2w" and x[metric]
                ),
                None,
            )
            target_metric, kind, bound = TARGETS[r["size"]]
            ratio = r[target_metric] / ref[target_metric] if ref[target_metric] else None
            r["target"] = {
                "metric": target_metric,
                "kind": kind,
                "bound": bound,
                "ratio": ratio,
                "pass": ratio is not None and (ratio <= bound if kind == "max" else ratio >= bound),
            }
    doc = {
        "benchmark": "hot_blocks",
        "what": "GET of hot cached blocks: one cachenode vs nginx (sendfile) on the same files",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(
            [".venv/bin/python -m loadtest.bench_hot_blocks", *(argv or sys.argv[1:])]
        ),
        "hot_blocks_per_size": args.blocks,
        "notes": [
            (
                f"all on 127.0.0.1; each server's threads pinned to core {args.server_cpu} "
                f"and wrk to core {args.wrk_cpu} (taskset), the same for every server"
                if args.pin
                else f"all on 127.0.0.1; wrk shares the machine's {env['cpus']} cores with "
                "the server under test (not pinned)"
            ),
            "4MiB: 4 MiB blocks of one object; 64KiB: one-block 64 KiB objects (bs=4 MiB)",
            "cachenode URL /v1/blocks/<id> (a hit, no source parameters); nginx URL = the "
            "block file's path under a copy of <cache dir>/blocks/ whose files hold just the "
            "block's bytes (the node's end with part checksums, which it never sends)",
            "nginx: sendfile on, tcp_nopush on, access_log off, keepalive_requests 1e6",
            "ratio = MiB/s at 4MiB, req/s at 64KiB, to nginx with 1 worker process",
            (
                "CPU % = CPU time (user + system) of the server process(es) / wall time (100% ="
                " one core); other CPU = the rest of the machine's busy time meanwhile (kernel "
                "softirq work not charged to a task, plus any other program: well above ~30% "
                "means a noisy neighbour, rerun); server CPU/req = the server's CPU time per "
                "request, the figure of the 4 MiB target, and server user/req its user-space "
                "part (the server's own code: the kernel's loopback work is system time); "
                "machine CPU/req = all the machine's busy time per request (server, wrk and the"
                " kernel's work wherever it was charged). The kernel's loopback work (TCP "
                "receive and ACK processing, paced sends) is charged to whichever task is "
                "current on the core where it runs, so at 4 MiB the server's figure moves by up"
                " to 2x between rounds, pinned or not, while the machine's stays within ~15%; "
                "the json has each round's per-core user, system and softirq time (server_core,"
                " wrk_core)"
            ),
            f"{args.rounds} rounds, the servers taking turns in each; every figure is the "
            "median over the rounds (CPU/req range: lowest and highest round); a "
            f"{args.warmup:g}s wrk run before each measured one is discarded",
        ],
        "environment": env,
        "elapsed_s": time.monotonic() - t0,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    command = " ".join([".venv/bin/python -m loadtest.bench_hot_blocks", *(argv or sys.argv[1:])])
    md = (
        "# Hot block GETs: cachenode vs nginx\n\n"
        f"{doc['date']}, {env['cpus']} CPUs, Python {env['python']}, aiohttp {env['aiohttp']}, "
        f"uvloop {env['uvloop']}, {env['nginx']}, {env['wrk']}, shmem huge pages "
        f"`{env['shmem_huge_pages']}`, load average {env['loadavg_before'][0]:.2f} before.\n\n"
        f"Command: `{command}`\n\n" + table(rows) + "\n" + "".join(f"- {n}\n" for n in doc["notes"])
    )
    (args.out / f"{args.name}.md").write_text(md)
    print()
    print(table(rows))
    print(f"wrote {args.out / (args.name + '.json')} and {args.name}.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); everything started was stopped", file=sys.stderr)
        sys.exit(130)
