"""fio through the mount against the references a user would pick instead, in one run.

Everything runs on loopback over one SeaweedFS S3 server (``testkit.seaweed``): etcd,
three cache nodes, ``mountd``, ``rclone mount --vfs-cache-mode full``, ``s3fs -o
use_cache`` and ``loadtest/noopfs.py`` (a pyfuse3 file system serving from memory: the
ceiling of any Python FUSE mount). ``fio`` runs the job shapes Mountpoint for S3 and
JuiceFS publish: sequential 1 MiB, random 4 KiB and 64 KiB, 1 and 4 jobs, ``psync``,
page cache dropped before each job (so run as root). A sequential job reads the file once,
for at most ``--runtime`` seconds; a random job runs ``--random-runtime`` seconds (30,
time based), as Mountpoint's published random-read jobs do: a fresh mount pulls the
blocks random reads come back to while it reads (on this one-disk machine its first 2-3
seconds run at a few hundred reads a second, ``loadtest/results/mount.md``, eleventh
session), and in a 5 s job those seconds were half the figure.

Warm phase (SeaweedFS as it is):

* ``mountd``: a fresh mount for each job over cache nodes that hold the file, with its
  default local disk tier (``--local-cache auto``) EMPTY: a compute node that never read
  the file (the tier fills as the job reads);
* ``mountd-off``: the same with ``--local-cache off`` (the nodes and memory alone);
* ``mountd-apart``: as ``mountd``, but the nodes' block files are read back into the
  page cache after each drop: on a cluster the nodes are other machines, whose page
  caches a compute node's drop does not touch, and whose disks its local tier does not
  share (here one virtual disk of ~1.1 GB/s serves the nodes' reads and the tier's
  writes, and bounds ``mountd``'s sequential read);
* ``mountd-local``: one mount whose default local disk tier is warm: it has read the
  file through twice (a first stream through a file stores nothing in the tier);
* ``rclone``, ``s3fs``: one mount each whose local disk cache has read the file once;
* ``noopfs``: the ceiling.

The nodes' state carries from job to job: a node reads a block that is not in its page
cache with ``O_DIRECT`` and the next whole read of it through the page cache
(``cachenode.store.BlockStore.open_block``), and each job's drop of the page caches makes
every other sequential pass through the same nodes pay that buffered read without the
hits it is for. Compare figures of jobs in the same position (``mountd`` is always the
first after the prime; ``loadtest/results/mount.md``, twelfth session).

Cold phase (S3's bandwidth per connection, ``--mbps-per-conn``, put in the kernel with
an htb class per connection on the S3 port, so it costs no Python CPU; this kernel has
no netem, so S3's time to first byte is not modelled): a sequential read of a never-read
object by ``mountd``, ``rclone`` and ``s3fs``; the origin's own ceiling (16 plain
GETs at once through the same shaping); then N fresh mounts reading one new object at
once, with the origin's bytes and GETs counted by the nodes. The qdiscs are removed
however the run ends.

CPU per byte is the CPU time of the processes that serve the reads (mountd and the
three nodes; rclone; s3fs; noopfs; plus SeaweedFS in the cold phase) over the bytes fio
read. Beside it, how busy the machine's cores and its disk were during the job: every
process here shares 2 cores and one virtual disk, and a figure bound by neither is
bound by waiting (a pipeline's depth, an origin's pace). With ``--apart`` the two
sides run on CPUs of their own (``taskset``): fio and every mount (the compute node)
on the first half, the nodes, etcd and SeaweedFS (other machines on a cluster) on the
other, so the nodes' work no longer takes the reader's CPU, and each reference gets the
same half as mountd.

Usage: ``python -m loadtest.bench_mount [--size-mib 1024] [--runtime 5] [--random-runtime 30]
[--apart]``; writes
``loadtest/results/mount.json`` and ``loadtest/results/mount.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3.s3.transfer

from clientlib.launcher import Process, ProcessGroup, start_etcd, start_node
from testkit import metric_sum
from testkit.seaweed import start_seaweed

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024
BUCKET = "bench"
#: (name, fio rw, block size, jobs)
SHAPES = [
    ("seq_1m_1job", "read", "1m", 1),
    ("seq_1m_4jobs", "read", "1m", 4),
    ("rand_4k_1job", "randread", "4k", 1),
    ("rand_4k_4jobs", "randread", "4k", 4),
    ("rand_64k_1job", "randread", "64k", 1),
    ("rand_64k_4jobs", "randread", "64k", 4),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: With ``--apart``: the CPU of each side, "compute" (fio and every mount) and "remote"
#: (the cache nodes, etcd and SeaweedFS).
CPUS: dict[str, str] = {}


def pin(pid: int, side: str) -> None:
    """Every thread of ``pid`` (and those it makes later) on ``side``'s CPU, with
    ``--apart``."""
    if side in CPUS:
        cmd = ["taskset", "--all-tasks", "--cpu-list", "--pid", CPUS[side], str(pid)]
        subprocess.run(cmd, check=True, capture_output=True)


def on_compute_cpu() -> list[str]:
    """The prefix that runs a command on the compute side's CPU, with ``--apart``."""
    return ["taskset", "--cpu-list", CPUS["compute"]] if "compute" in CPUS else []


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def busy_cores() -> tuple[float, float]:
    """The machine's busy and total CPU seconds so far, all cores (``/proc/stat``): idle
    and iowait are not busy. Their ratio over a job says whether the job had the cores
    to itself or was bound by them (every process here shares one 2-core machine)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user..steal; guest time is already in user
    return (total - fields[3] - fields[4]) / CLK_TCK, total / CLK_TCK


def disk_ticks() -> tuple[float, float]:
    """Milliseconds the busiest whole disk has spent doing I/O so far (``/proc/diskstats``
    io_ticks), and the wall clock in ms: over a job, how busy the disk was (every
    process here, SeaweedFS's volume, the nodes' cache dirs, the mount's local tier,
    shares one virtual disk)."""
    ticks = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if Path(f"/sys/block/{fields[2]}/device").exists():  # a disk, not a partition
            ticks = max(ticks, int(fields[12]))
    return ticks, time.monotonic() * 1e3


def machine_now() -> tuple[float, ...]:
    """The machine's counters so far: :func:`busy_cores` and :func:`disk_ticks`."""
    return (*busy_cores(), *disk_ticks())


def machine_since(before: tuple[float, ...]) -> dict[str, float]:
    """How busy the machine's cores (a share of all of them; 1.0: saturated) and its
    disk were since :func:`machine_now` gave ``before``."""
    busy, total, ticks, wall = (a - b for a, b in zip(machine_now(), before, strict=True))
    return {"machine_busy": busy / max(total, 1e-9), "disk_busy": ticks / max(wall, 1e-9)}


def read_back(dirs: list[Path]) -> None:
    """Every file under ``dirs`` read into the page cache (buffered, contents dropped)."""
    for top in dirs:
        for path in top.rglob("*"):
            if path.is_file():
                with path.open("rb") as fh:
                    while fh.read(4 * MIB):
                        pass


def fio(
    path: Path,
    rw: str,
    bs: str,
    jobs: int,
    size: int,
    runtime: float,
) -> dict[str, float]:
    """One fio job shape on ``path`` (each of ``jobs`` reads its own 1/jobs of the file):
    IOPS, MB/s and bytes read. A random job runs all of ``runtime`` (time based: it reads
    its share again once it has read it all); a sequential one stops at its share's end."""
    share = size // jobs
    cmd = [*on_compute_cpu(), "fio", "--name=bench", f"--filename={path}", f"--rw={rw}"]
    cmd += [f"--bs={bs}"]
    cmd += ["--ioengine=psync", "--readonly", "--invalidate=1", f"--numjobs={jobs}"]
    cmd += [f"--size={share}", f"--offset_increment={share}", f"--runtime={runtime}"]
    cmd += ["--group_reporting", "--output-format=json"]
    if rw == "randread":
        cmd.append("--time_based")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    read = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return {"iops": read["iops"], "mbps": read["bw_bytes"] / 1e6, "bytes": read["io_bytes"]}


def job_seconds(args: argparse.Namespace, shape: tuple[str, str, str, int]) -> float:
    """How long a warm job of ``shape`` runs (see the module docstring)."""
    return args.random_runtime if shape[1] == "randread" else args.runtime


def measured(
    path: Path,
    shape: tuple[str, str, str, int],
    size: int,
    runtime: float,
    pids: list[int],
    profile: Path | None = None,
    kept: list[Path] | None = None,
) -> dict[str, float]:
    """fio's figures, the page cache dropped first except the files under ``kept`` (read
    back); the CPU the serving processes spent per MB read; how busy the machine's cores
    and its disk were during the job; with ``profile``, a ``py-spy record --native`` of
    the first two of ``pids`` (the mount and one node) during the job, as
    ``<profile>-<pid>.txt`` (collapsed stacks; py-spy's own CPU is not counted, but it
    slows the processes it samples: take figures from runs without it)."""
    _, rw, bs, jobs = shape
    drop_caches()
    if kept:
        read_back(kept)
    spies = (
        [py_spy(pid, runtime, Path(f"{profile}-{pid}.txt")) for pid in pids[:2]] if profile else []
    )
    before = [cpu_seconds([pid]) for pid in pids]
    machine = machine_now()
    r = fio(path, rw, bs, jobs, size, runtime)
    spent = [cpu_seconds([pid]) - b for pid, b in zip(pids, before, strict=True)]
    r.update(machine_since(machine))
    r["cpu_s"] = sum(spent)
    # The first process's own share (the mount, where the nodes are counted too).
    r["cpu_us_per_mb_first"] = spent[0] * 1e6 / max(r["bytes"] / 1e6, 1e-9)
    for spy in spies:
        spy.wait(timeout=runtime + 30)
    r["cpu_us_per_mb"] = r["cpu_s"] * 1e6 / max(r["bytes"] / 1e6, 1e-9)
    return r


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` for ``seconds``, native frames, collapsed to ``out``."""
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--native", "-p", str(pid)]
    cmd += ["-d", str(max(1, round(seconds))), "-f", "raw", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Mounted:
    """A FUSE file system process, unmounted on exit."""

    def __init__(
        self, name: str, cmd: list[str], path: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.proc = Process(name, cmd, log, env=env).start()
        deadline = time.monotonic() + 60
        while not os.path.ismount(path):
            if not self.proc.alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{name} did not mount:\n{self.proc.log_tail()}")
            time.sleep(0.05)
        pin(self.proc.pid, "compute")

    def close(self) -> None:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
        self.proc.stop(timeout=20)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)


class SlowOrigin:
    """S3's bandwidth per connection on the loopback port of the S3 server, in the kernel.

    An htb class of ``mbps`` per connection: the packets the port sends are hashed by
    the client's port into 256 classes (two connections share one only when their ports
    share the low byte). This kernel has no netem or fq qdisc, so the time to the first
    byte is not modelled. Everything else on loopback is left unshaped (htb's direct
    queue).
    """

    BUCKETS = 256

    def __init__(self, port: int, mbps: float) -> None:
        self.port, self.mbps = port, mbps

    def __enter__(self) -> SlowOrigin:
        rate = f"{int(self.mbps * 8)}mbit"
        match = f"match ip sport {self.port} 0xffff"
        batch = [
            "qdisc add dev lo root handle 1: htb default 0",
            "filter add dev lo parent 1: prio 1 handle 2: protocol ip u32 divisor 256",
            f"filter add dev lo parent 1: protocol ip prio 1 u32 ht 800:: {match} "
            "hashkey mask 0x000000ff at 20 link 2:",
        ]
        for i in range(self.BUCKETS):
            batch.append(
                f"class add dev lo parent 1: classid 1:{0x100 + i:x} htb rate {rate} "
                f"ceil {rate} burst 256k cburst 256k"
            )
            batch.append(
                f"filter add dev lo parent 1: protocol ip prio 1 u32 ht 2:{i:x}: {match} "
                f"flowid 1:{0x100 + i:x}"
            )
        done = subprocess.run(
            ["tc", "-batch", "-"], input="\n".join(batch) + "\n", capture_output=True, text=True
        )
        if done.returncode != 0:
            self.__exit__()
            raise RuntimeError(f"tc: {done.stderr.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        cmd = ["tc", "qdisc", "del", "dev", "lo", "root"]
        subprocess.run(cmd, check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the warm file")
    parser.add_argument("--cold-mib", type=int, default=256, help="each cold object")
    parser.add_argument(
        "--runtime", type=float, default=5.0, help="seconds per sequential fio job, at most"
    )
    parser.add_argument(
        "--random-runtime",
        type=float,
        default=30.0,
        help="seconds per random fio job (time based, as Mountpoint's published jobs)",
    )
    parser.add_argument("--mbps-per-conn", type=float, default=90.0)
    parser.add_argument("--mounts", type=int, default=3, help="N mounts reading one object")
    parser.add_argument("--only", help="comma-separated systems of the warm phase")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--shapes", help="comma-separated job shapes of the warm phase")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the serving processes during each warm job, to results/OUT-prof/",
    )
    parser.add_argument(
        "--apart",
        action="store_true",
        help="fio and the mounts on the first half of the CPUs, the nodes, etcd and "
        "SeaweedFS on the other half: machines apart, as far as CPU goes",
    )
    parser.add_argument("--out", default="mount", help="results/OUT.json and OUT.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_mount: run as root (drop_caches, FUSE mounts, tc)")
    if args.apart:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("bench_mount: --apart needs at least 2 CPUs")
        half = len(cpus) // 2
        CPUS["compute"] = ",".join(map(str, cpus[:half]))
        CPUS["remote"] = ",".join(map(str, cpus[half:]))
    work = Path(tempfile.mkdtemp(prefix="bench-mount-"))
    try:
        with ProcessGroup():
            run(args, work)
    finally:
        remove_work(work)


def remove_work(work: Path) -> None:
    """Delete the run's directory (several GiB: the origin's, the nodes' and the disk
    caches' copies of the data), unless something is still mounted under it."""
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    if any(point.startswith(f"{work}/") for point in mounted):
        print(f"bench_mount: {work} left in place: something is still mounted in it")
        return
    shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    size, cold_size = args.size_mib * MIB, args.cold_mib * MIB
    only = set(args.only.split(",")) if args.only else None
    shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes.split(",")]
    results: dict[str, object] = {
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg(), "pinned": dict(CPUS)},
        "warm": {},
        "cold": {},
    }
    mounts: list[Mounted] = []
    seaweed = start_seaweed(work / "seaweed")
    pin(seaweed.process.pid, "remote")
    s3 = seaweed.client()
    s3.create_bucket(Bucket=BUCKET)
    # The nodes, the mounts and s3fs read the origin with these.
    os.environ.update(
        AWS_ENDPOINT_URL=seaweed.endpoint,
        AWS_ACCESS_KEY_ID="seaweed",
        AWS_SECRET_ACCESS_KEY="seaweed",
        AWS_DEFAULT_REGION="us-east-1",
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    # The mounts' default local disk tiers live in the run's directory, removed with it.
    env["RINGCACHE_LOCAL_CACHE_ROOT"] = str(work / "tiers")
    etcd = start_etcd(work / "etcd")
    nodes = [start_node(etcd.url, "bench", work / f"node{i}", size="8GiB") for i in range(3)]
    for remote in (etcd.pid, *(n.pid for n in nodes)):
        pin(remote, "remote")
    node_pids = [n.pid for n in nodes]
    source = work / "data.bin"
    with source.open("wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(MIB))
    config = boto3.s3.transfer.TransferConfig(multipart_chunksize=64 * MIB)
    s3.upload_file(str(source), BUCKET, "data.bin", Config=config)
    with source.open("r+b") as fh:
        fh.truncate(cold_size)
    cold_keys = ("cold-mountd.bin", "cold-rclone.bin", "cold-s3fs.bin", "cold-origin.bin")
    for key in (*cold_keys, "shared.bin"):
        s3.upload_file(str(source), BUCKET, key, Config=config)
    source.unlink()
    print(f"data ready in {work}", flush=True)

    def mountd(name: str, *extra: str) -> Mounted:
        cmd = [sys.executable, "-m", "mountd", f"s3://{BUCKET}", str(work / name)]
        cmd += ["--etcd", etcd.url, "--cluster", "bench", "--foreground"]
        cmd += ["--log-level", "WARNING", *extra]
        m = Mounted(name, cmd, work / name, work / f"{name}.log", env=env)
        mounts.append(m)
        return m

    rclone_env = dict(
        env,
        RCLONE_CONFIG_SW_TYPE="s3",
        RCLONE_CONFIG_SW_PROVIDER="SeaweedFS",
        RCLONE_CONFIG_SW_ENDPOINT=seaweed.endpoint,
        RCLONE_CONFIG_SW_ACCESS_KEY_ID="seaweed",
        RCLONE_CONFIG_SW_SECRET_ACCESS_KEY="seaweed",
        RCLONE_CONFIG_SW_REGION="us-east-1",
        RCLONE_CONFIG_SW_FORCE_PATH_STYLE="true",
        RCLONE_CONFIG="/dev/null",
    )

    def rclone(name: str) -> Mounted:
        cmd = ["rclone", "mount", f"sw:{BUCKET}", str(work / name), "--vfs-cache-mode", "full"]
        cmd += ["--cache-dir", str(work / f"{name}-cache")]
        m = Mounted(name, cmd, work / name, work / f"{name}.log", env=rclone_env)
        mounts.append(m)
        return m

    passwd = work / "s3fs.passwd"
    passwd.write_text("seaweed:seaweed\n")
    passwd.chmod(0o600)

    def s3fs(name: str) -> Mounted:
        (work / f"{name}-cache").mkdir()
        cmd = ["s3fs", BUCKET, str(work / name), "-f", "-o", f"passwd_file={passwd}"]
        cmd += ["-o", f"url={seaweed.endpoint}", "-o", "use_path_request_style"]
        cmd += ["-o", f"use_cache={work / f'{name}-cache'}"]
        m = Mounted(name, cmd, work / name, work / f"{name}.log")
        mounts.append(m)
        return m

    def noopfs(name: str) -> Mounted:
        cmd = [sys.executable, "-m", "loadtest.noopfs", str(work / name)]
        cmd += ["--size-mib", str(args.size_mib)]
        m = Mounted(name, cmd, work / name, work / f"{name}.log")
        mounts.append(m)
        return m

    def read_all(path: Path) -> None:
        with path.open("rb") as fh:
            while fh.read(4 * MIB):
                pass

    def wanted(system: str) -> bool:
        return only is None or system in only

    def profiled(system: str, shape: tuple[str, str, str, int]) -> Path | None:
        if not args.profile:
            return None
        (RESULTS / f"{args.out}-prof").mkdir(parents=True, exist_ok=True)
        return RESULTS / f"{args.out}-prof" / f"{system}-{shape[0]}"

    warm: dict[str, dict[str, object]] = results["warm"]  # type: ignore[assignment]
    try:
        # -- warm phase ----------------------------------------------------------------------
        prime = mountd("mountd-prime", "--local-cache", "off")
        read_all(prime.path / "data.bin")  # the nodes now hold every block
        prime.close()
        for system, flags, kept in (
            ("mountd", (), None),
            ("mountd-off", ("--local-cache", "off"), None),
            ("mountd-apart", (), [n.cache_dir for n in nodes]),
        ):
            if not wanted(system):
                continue
            warm[system] = {}
            for shape in shapes:
                # A new root for each job: its default tier starts empty.
                root = work / f"{system}-{shape[0]}-tiers"
                m = mountd(f"{system}-{shape[0]}", "--local-cache-root", str(root), *flags)
                warm[system][shape[0]] = measured(
                    m.path / "data.bin",
                    shape,
                    size,
                    job_seconds(args, shape),
                    [m.proc.pid, *node_pids],
                    profiled(system, shape),
                    kept,
                )
                m.close()
                shutil.rmtree(root, ignore_errors=True)
            print(system, warm[system], flush=True)
        for system, start, reads in (
            ("mountd-local", mountd, 2),
            ("rclone", rclone, 1),
            ("s3fs", s3fs, 1),
            ("noopfs", noopfs, 0),
        ):
            if not wanted(system):
                continue
            m = start(system)
            for _ in range(reads):
                drop_caches()  # so that each read through reaches the mount
                read_all(m.path / "data.bin")
            pids = [m.proc.pid, *node_pids] if system.startswith("mountd") else [m.proc.pid]
            warm[system] = {
                shape[0]: measured(
                    m.path / "data.bin",
                    shape,
                    size,
                    job_seconds(args, shape),
                    pids,
                    profiled(system, shape),
                )
                for shape in shapes
            }
            m.close()
            print(system, warm[system], flush=True)

        # -- cold phase: S3's costs ------------------------------------------------------------
        if not args.skip_cold:
            cold = cold_phase(args, work, cold_size, seaweed, nodes, mountd, rclone, s3fs)
            results["cold"] = cold
    finally:
        for m in mounts:
            m.close()
    results["ratios"] = ratios(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(report(results))
    print((RESULTS / f"{args.out}.md").read_text())


def cold_phase(args, work, cold_size, seaweed, nodes, mountd, rclone, s3fs):  # type: ignore[no-untyped-def]
    """Sequential 1 MiB reads of never-read objects, and N mounts reading one at once,
    with S3's costs on the S3 port."""
    shape = ("seq_1m_1job", "read", "1m", 1)
    node_pids = [n.pid for n in nodes]
    port = int(seaweed.endpoint.rsplit(":", 1)[1])
    cold: dict[str, object] = {"mbps_per_conn": args.mbps_per_conn}

    def origin(name: str, labels: str = "") -> float:
        total = 0.0
        for n in nodes:
            with urllib.request.urlopen(n.url + "/metrics", timeout=5) as resp:
                total += metric_sum(resp.read().decode(), name, labels)
        return total

    def node_misses() -> dict[str, float]:
        """The nodes' miss counters: answered misses and their seconds, origin GETs."""
        return {
            "misses": origin("ringcache_request_seconds_count", 'op="get_miss"'),
            "miss_seconds": origin("ringcache_request_seconds_sum", 'op="get_miss"'),
            "origin_gets": origin("ringcache_origin_requests_total", 'op="get"'),
            "handoff_lookups": origin("ringcache_handoffs_total"),
        }

    runtime = max(args.runtime, 20.0)
    with SlowOrigin(port, args.mbps_per_conn):
        for system, start, key in (
            ("mountd", lambda n: mountd(n), "cold-mountd.bin"),
            ("rclone", rclone, "cold-rclone.bin"),
            ("s3fs", s3fs, "cold-s3fs.bin"),
        ):
            m = start(f"{system}-cold")
            pids = [m.proc.pid, seaweed.process.pid]
            groups = {system: [m.proc.pid], "seaweedfs": [seaweed.process.pid]}
            if system == "mountd":
                pids += node_pids
                groups["nodes"] = node_pids
                counters = node_misses()
            before = {group: usage(members) for group, members in groups.items()}
            cold[system] = r = measured(m.path / key, shape, cold_size, runtime, pids)
            r["groups"] = per_mb(before, groups, r["bytes"])
            if system == "mountd":
                r["nodes"] = {k: v - counters[k] for k, v in node_misses().items()}
            m.close()
            print("cold", system, cold[system], flush=True)
        cold["origin"] = origin_ceiling(seaweed, "cold-origin.bin", cold_size)
        print("cold origin", cold["origin"], flush=True)
        shared = [mountd(f"mountd-shared{i}") for i in range(args.mounts)]
        bytes_before = origin("ringcache_origin_bytes_total")
        gets_before = origin("ringcache_origin_requests_total")
        drop_caches()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.mounts) as pool:
            list(
                pool.map(
                    lambda m: subprocess.run(
                        ["cat", str(m.path / "shared.bin")], check=True, stdout=subprocess.DEVNULL
                    ),
                    shared,
                )
            )
        elapsed = time.perf_counter() - started
        for m in shared:
            m.close()
        blocks = -(-cold_size // (4 * MIB))
        cold["n_mounts"] = {
            "mounts": args.mounts,
            "seconds": elapsed,
            "origin_bytes_ratio": (origin("ringcache_origin_bytes_total") - bytes_before)
            / cold_size,
            "origin_gets": origin("ringcache_origin_requests_total") - gets_before,
            "blocks": blocks,
        }
        print("cold n_mounts", cold["n_mounts"], flush=True)
    return cold


#: Plain GETs in flight in :func:`origin_ceiling`: more than any system here keeps.
CEILING_GETS = 16


def origin_ceiling(seaweed, key: str, size: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """What the shaped origin itself gives: :data:`CEILING_GETS` threads GETting the
    object's 4 MiB ranges with boto3 (bytes discarded), page cache dropped first: the
    most any system reading it here could get, with nothing to write, check or pass on."""
    client = seaweed.client(CEILING_GETS)

    def get(offset: int) -> int:
        end = min(offset + 4 * MIB, size) - 1
        answer = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={offset}-{end}")
        return len(answer["Body"].read())

    drop_caches()
    machine = machine_now()
    started = time.perf_counter()
    with ThreadPoolExecutor(CEILING_GETS) as pool:
        done = sum(pool.map(get, range(0, size, 4 * MIB)))
    elapsed = time.perf_counter() - started
    return {"mbps": done / elapsed / 1e6, "gets": CEILING_GETS, **machine_since(machine)}


def usage(pids: list[int]) -> tuple[float, int]:
    """User + system CPU seconds and minor page faults of these processes so far."""
    cpu, faults = 0, 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += int(fields[11]) + int(fields[12])
        faults += int(fields[7])
    return cpu / CLK_TCK, faults


def per_mb(
    before: dict[str, tuple[float, int]], groups: dict[str, list[int]], nbytes: float
) -> dict[str, dict[str, float]]:
    """Each group's CPU us and minor faults per MB read since ``before``: where a cold
    read's CPU goes (the mount, the nodes, the S3 server)."""
    mb = max(nbytes / 1e6, 1e-9)
    out = {}
    for group, members in groups.items():
        cpu, faults = usage(members)
        out[group] = {
            "cpu_us_per_mb": (cpu - before[group][0]) * 1e6 / mb,
            "minflt_per_mb": (faults - before[group][1]) / mb,
        }
    return out


def ratios(results: dict[str, object]) -> dict[str, float]:
    """The issue's targets, as ratios within this run."""
    warm: dict[str, dict[str, dict[str, float]]] = results["warm"]  # type: ignore[assignment]
    cold: dict[str, dict[str, float]] = results["cold"]  # type: ignore[assignment]
    out: dict[str, float] = {}

    def put(name: str, a: str, b: str, shape: str, key: str = "iops") -> None:
        if a in warm and b in warm and shape in warm[a] and shape in warm[b]:
            out[name] = warm[a][shape][key] / warm[b][shape][key]

    put("rand_64k_1job mountd / rclone (>= 0.6)", "mountd", "rclone", "rand_64k_1job")
    put("rand_64k_1job mountd-local / rclone (>= 1.0)", "mountd-local", "rclone", "rand_64k_1job")
    put("rand_4k_1job mountd / noopfs (>= 0.25)", "mountd", "noopfs", "rand_4k_1job")
    put("rand_64k_1job mountd / noopfs (>= 0.25)", "mountd", "noopfs", "rand_64k_1job")
    put("seq_1m_1job mountd / rclone (>= 1.0)", "mountd", "rclone", "seq_1m_1job", "mbps")
    put("seq_1m_1job mountd / noopfs (>= 0.5)", "mountd", "noopfs", "seq_1m_1job", "mbps")
    put(
        "seq_1m_1job mountd-apart / noopfs (nodes' page cache kept)",
        "mountd-apart",
        "noopfs",
        "seq_1m_1job",
        "mbps",
    )
    for ref in ("rclone", "s3fs"):
        if "mountd" in cold and ref in cold:
            out[f"cold seq_1m_1job mountd / {ref} (>= 2.0)"] = (
                cold["mountd"]["mbps"] / cold[ref]["mbps"]
            )
    for system in ("mountd", "s3fs"):
        if system in cold and "origin" in cold:
            out[f"cold seq_1m_1job {system} / the origin's ceiling"] = (
                cold[system]["mbps"] / cold["origin"]["mbps"]
            )
    return out


def cell(r: dict[str, float], key: str, own: bool) -> str:
    """A figure and, in brackets, the CPU per MB (and the mount's own, when asked)."""
    cpu = f"{r['cpu_us_per_mb']:,.0f}"
    if own and "cpu_us_per_mb_first" in r:
        cpu += f"; {r['cpu_us_per_mb_first']:,.0f}"
    if "machine_busy" in r:
        cpu += f"; {r['machine_busy']:.0%}, disk {r['disk_busy']:.0%}"
    return f"{r[key]:,.0f} ({cpu})"


def group_cell(r: dict[str, object], group: str) -> str:
    """A cold run's CPU per MB of one process group, and its minor faults per MB."""
    g = r.get("groups", {}).get(group)  # type: ignore[attr-defined]
    return f"{g['cpu_us_per_mb']:,.0f} ({g['minflt_per_mb']:,.0f})" if g else ""


def report(results: dict[str, object]) -> str:
    """The run as markdown: warm figures per shape and system, cold figures, ratios."""
    warm: dict[str, dict[str, dict[str, float]]] = results["warm"]  # type: ignore[assignment]
    cold: dict[str, object] = results["cold"]  # type: ignore[assignment]
    lines = ["# bench_mount: one run", ""]
    lines.append(f"`{json.dumps(results['args'])}`, load at start {results['machine']}")
    lines += ["", "## Warm (SeaweedFS on loopback)", ""]
    systems = list(warm)
    lines.append("| shape | " + " | ".join(systems) + " |")
    lines.append("|---|" + "---:|" * len(systems))
    for shape, _, bs, _ in SHAPES:
        if not all(shape in warm[s] for s in systems):
            continue
        key = "mbps" if bs == "1m" else "iops"
        cells = [cell(warm[s][shape], key, s.startswith("mountd")) for s in systems]
        lines.append(
            f"| {shape} ({'MB/s' if key == 'mbps' else 'IOPS'}) | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "In brackets: CPU us per MB read of the serving processes (of mountd's: mountd's own),",
        "then how busy the whole machine's cores were (100%: the job was bound by them) and",
        "its disk (share of the time it had I/O in flight).",
    ]
    lines += [
        "`mountd`: a fresh mount per job, its default local disk tier empty at the start;",
        "`mountd-off`: the same with `--local-cache off`; `mountd-apart`: as `mountd`, the",
        "nodes' block files read back into the page cache after each drop (the nodes'",
        "machines' caches and disks are not the compute node's); `mountd-local`: one mount",
        "whose default local disk tier has read the file through twice (a first stream",
        "through a file stores nothing there).",
        "",
    ]
    if cold:
        lines += ["## Cold (S3's bandwidth per connection on the S3 port: tc htb)", ""]
        lines += [
            "| system | MB/s | CPU us per MB | the mount's own | nodes' | SeaweedFS's "
            "| cores busy | disk busy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for system in ("mountd", "rclone", "s3fs"):
            r = cold.get(system)
            if isinstance(r, dict):
                lines.append(
                    f"| {system} | {r['mbps']:,.1f} | {r['cpu_us_per_mb']:,.0f} | "
                    + " | ".join(group_cell(r, g) for g in (system, "nodes", "seaweedfs"))
                    + f" | {r['machine_busy']:.0%} | {r['disk_busy']:.0%} |"
                )
        if isinstance(ceiling := cold.get("origin"), dict):
            lines.append(
                f"| the origin's ceiling: {ceiling['gets']} plain GETs | {ceiling['mbps']:,.1f} "
                f"| | | | | {ceiling['machine_busy']:.0%} | {ceiling['disk_busy']:.0%} |"
            )
        lines += [
            "",
            "Per process group: CPU us per MB read (minor page faults per MB in brackets).",
            "The origin's ceiling: boto3 threads GETting a cold object's 4 MiB ranges through",
            "the same shaping, bytes discarded: the most any reader could get here.",
        ]
        nodes = cold.get("mountd", {}).get("nodes")  # type: ignore[union-attr]
        if nodes and nodes["misses"]:
            lines.append(
                f"The nodes' misses: {nodes['misses']:.0f} answered, "
                f"{nodes['miss_seconds'] / nodes['misses'] * 1e3:.0f} ms each on average, "
                f"{nodes['origin_gets']:.0f} origin GETs, "
                f"{nodes['handoff_lookups']:.0f} handoff lookups."
            )
        lines += ["", f"N mounts reading one new object at once: `{cold.get('n_mounts')}`", ""]
    lines += ["## Ratios", "", "| target | ratio |", "|---|---:|"]
    for name, value in results["ratios"].items():  # type: ignore[attr-defined]
        lines.append(f"| {name} | {value:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
