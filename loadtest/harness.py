"""What the cluster load tests share: their run, clean-up and results harness.

``fairshare_bench.py``, ``fault_load.py`` and ``skewed_load.py`` each start etcd and
cachenode processes (and, for the first two, worker processes with their own event loops)
on this machine, put a ``file://`` data set in a temp dir, and write their results to
``loadtest/results/``. The code that does this the same way in each of them lives here,
so that a fix to, say, how processes are stopped on Ctrl-C reaches all three. The scripts
run from the repository root as ``python -m loadtest.<script>`` and import it as
``from loadtest import harness``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from clientlib import CacheClient
    from clientlib.launcher import Node

RESULTS = Path(__file__).resolve().parent / "results"
CACHECTL = str(Path(sys.executable).with_name("cachectl"))

Result = dict[str, Any]
# A worker's coroutine: ``body(key, cfg, go, start_at, out)``, as WorkerGroup passes them.
WorkerBody = Callable[[Any, dict[str, Any], Any, Any, Any], Awaitable[Result]]


# ----------------------------------------------------------------------------- main()


def add_output_options(parser: argparse.ArgumentParser, name: str | None = None) -> None:
    """``--name`` (if the script has one) and ``--keep``, the same in every load test."""
    if name is not None:
        parser.add_argument("--name", default=name, help="results file stem")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")


def run_and_save(
    body: Callable[[Path, list[Any], list[Any]], Result],
    *,
    temp_prefix: str,
    keep: bool,
    name: str,
    markdown: Callable[[Result], str],
    plot: Callable[[Result, Path], None] | None = None,
) -> None:
    """Run ``body(root, procs, workers)`` in a fresh temp dir and save what it returns.

    It exists so that no load test leaves processes or a temp dir behind, however it ends.
    Whatever the body started and appended to ``procs`` (servers, or lists of them) or
    ``workers`` (multiprocessing processes) is stopped however it ends, SIGTERM and SIGHUP
    included (they raise KeyboardInterrupt like Ctrl-C); the temp dir is removed unless
    ``keep``. The result gets the run's wall time as ``seconds`` and is written to
    ``results/<name>.json`` and ``.md`` (and ``.png`` with ``plot``); the Markdown is
    printed too.
    """

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    root = Path(tempfile.mkdtemp(prefix=temp_prefix))
    procs: list[Any] = []
    workers: list[Any] = []
    started = time.perf_counter()
    try:
        result = body(root, procs, workers)
    finally:
        stop_all(procs, workers)
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    if plot is not None:
        plot(result, RESULTS / f"{name}.png")
    print(text)


def stop_all(procs: list[Any], workers: list[Any]) -> None:
    """Stop the workers, then the nodes, then etcd; each even if another fails.

    Used by :func:`run_and_save` whatever the run's outcome, so nothing outlives it.

    ``procs`` holds servers in start order, or lists of them (a cluster's nodes).
    """
    for p in workers:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    for item in reversed(procs):
        for proc in item if isinstance(item, list) else [item]:
            with contextlib.suppress(Exception):
                proc.stop()


# ----------------------------------------------------------------------------- the cluster


def write_objects(
    root: Path, count: int, size: int, rng: random.Random, digits: int = 3
) -> tuple[Path, list[str]]:
    """The ``file://`` origin: ``count`` random objects of ``size`` bytes in ``root/data``.

    A local origin needs no S3 endpoint and costs only a file read, so the figures are
    the cluster's. Returns the directory (for the nodes' ``--file-root``) and the objects' URLs.
    """
    data = root / "data"
    data.mkdir()
    urls = []
    for i in range(count):
        path = data / f"obj-{i:0{digits}d}.bin"
        path.write_bytes(rng.randbytes(size))
        urls.append(f"file://{path}")
    return data, urls


def file_url_bytes(url: str) -> bytes:
    """The bytes a read of a ``file://`` URL must return, to check every read's bytes."""
    return Path(url.removeprefix("file://")).read_bytes()


def set_block_size(etcd_url: str, cluster: str, block_size: int, *options: str) -> None:
    """Set the cluster's block size with the real CLI, before the nodes start.

    Nodes read it from etcd at start, so it has to be there first. ``options`` go before
    the subcommand (``--token-file SECRET`` on a secured cluster).
    """
    command = ["config", "set", "block_size", str(block_size)]
    subprocess.run(
        [CACHECTL, "--etcd", etcd_url, "--cluster", cluster, *options, *command],
        check=True,
        timeout=30,
        stdout=subprocess.DEVNULL,
    )


def node_stats(node: Node) -> dict[str, Any]:
    """A node's ``/v1/stats``: hits, misses, blocks and origin requests as the node counts."""
    with urllib.request.urlopen(node.url + "/v1/stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc; 0 if gone).

    To tell whether the cluster or the load generator was the limit of a run.
    """
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def load_avg() -> list[float]:
    """The machine's load average, to tell a busy machine from a slow cluster."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """The last keys of a result: what the figures were measured on, to compare runs."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


# ----------------------------------------------------------------------------- clients


async def wait_for_ring(
    clients: list[CacheClient], size: int, message: str, timeout: float = 30.0
) -> None:
    """Wait until every client's ring holds ``size`` nodes; TimeoutError(message) if not.

    Before that a client would send reads to the wrong owners or to the origin.
    """
    deadline = time.monotonic() + timeout
    while any(len(c.ring) != size for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def started_clients(clients: list[CacheClient]) -> AsyncIterator[list[CacheClient]]:
    """Start the clients one by one; close them all when the block ends, even on error."""
    for client in clients:
        await client.start()
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


# ----------------------------------------------------------------------------- workers


def worker_main(
    body: WorkerBody, key: Hashable, cfg: dict[str, Any], go: Any, start_at: Any, out: Any
) -> None:
    """A worker process's entry: run ``body`` on uvloop, its result or error to ``out``.

    The error goes to the parent as a message, so it fails the run instead of hanging it.
    """
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        out.put(("result", key, uvloop.run(body(key, cfg, go, start_at, out))))
    except BaseException as exc:
        out.put(("error", key, repr(exc)))
        raise


async def ready_then_start(who: str, key: Hashable, go: Any, start_at: Any, out: Any) -> float:
    """In a worker: report ready, wait for the parent's go, sleep until the common start.

    So that no worker's load starts while another is still starting up. Returns the
    start time (``time.time()``), the same in every worker.
    """
    out.put(("ready", key, None))
    if not await asyncio.to_thread(go.wait, 120):
        raise TimeoutError(f"{who}: no start signal")
    t0 = start_at.value
    await asyncio.sleep(max(0.0, t0 - time.time()))
    return t0


class WorkerGroup:
    """Load generator processes that start reading at the same instant.

    One spawned process (its own interpreter and event loop, so the load is not limited
    by one core or one loop) per ``(key, cfg)`` job runs ``body(key, cfg, go, start_at,
    out)``; the processes are added to ``workers`` so that :func:`stop_all` stops them.
    """

    def __init__(
        self,
        body: WorkerBody,
        jobs: Iterable[tuple[Hashable, dict[str, Any]]],
        workers: list[Any],
    ) -> None:
        ctx = mp.get_context("spawn")
        self.go, self.start_at, self.out = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
        self.procs: list[Any] = []
        for key, cfg in jobs:
            p = ctx.Process(
                target=worker_main,
                args=(body, key, cfg, self.go, self.start_at, self.out),
                daemon=True,
            )
            p.start()
            self.procs.append(p)
            workers.append(p)

    def _next(self, error_prefix: str, timeout: float) -> tuple[str, Any, Any]:
        kind, key, payload = self.out.get(timeout=timeout)
        if kind == "error":
            raise RuntimeError(f"{error_prefix}worker {key} failed: {payload}")
        return kind, key, payload

    def wait_ready(self, error_prefix: str = "") -> None:
        """Wait until every worker's clients see the cluster."""
        ready = 0
        while ready < len(self.procs):
            kind, _key, _payload = self._next(error_prefix, 90)
            ready += kind == "ready"

    def start(self, delay: float) -> float:
        """Let the workers go at ``delay`` seconds from now; returns that time."""
        t0 = time.time() + delay
        self.start_at.value = t0
        self.go.set()
        return t0

    def results(self, timeout: Callable[[], float], error_prefix: str = "") -> dict[Any, Result]:
        """Every worker's result by key (``timeout()``: seconds to wait for the next one)."""
        results: dict[Any, Result] = {}
        while len(results) < len(self.procs):
            kind, key, payload = self._next(error_prefix, timeout())
            if kind == "result":
                results[key] = payload
        for p in self.procs:
            p.join(10)
        return results


# ----------------------------------------------------------------------------- reports


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (NaN if there are none).

    One definition, so the load tests' p50 and p99 mean the same thing.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_ms(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of latencies in seconds, as milliseconds rounded to 0.01 (reports)."""
    return {
        "p50_ms": round(percentile(values, 0.50) * 1e3, 2),
        "p99_ms": round(percentile(values, 0.99) * 1e3, 2),
        "max_ms": round(max(values, default=float("nan")) * 1e3, 2),
    }


def two_panels(figsize: tuple[float, float]) -> tuple[Figure, tuple[Axes, Axes]]:
    """A figure with two plots side by side, for :func:`save_figure`.

    matplotlib (the ``bench`` extra) is imported here, when a script plots, not when it
    starts; on the Agg backend, which writes files and needs no display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=figsize)
    return fig, (ax1, ax2)


def save_figure(fig: Figure, path: Path) -> None:
    """Lay out a figure from :func:`two_panels`, write it as a PNG and free its memory."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
