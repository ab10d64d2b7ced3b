"""POSIX conformance of the mount against the references, in one run: pjdfstest.

pjdfstest (built by ``scripts/install.sh`` into ``.build/pjdfstest``) runs as root in a
fresh directory of each mount, over the same bucket of one SeaweedFS server (a real S3
server, ``testkit.seaweed``) and, for mountd, over moto_server too:

* ``mountd`` over SeaweedFS and over moto (one cache node per S3 server);
* ``rclone mount --vfs-cache-mode full --allow-other``;
* ``s3fs -o allow_other``.

Each ``.t`` file is run as prove runs it (with ``sh``, TAP on stdout), with a time limit per
file; the mounts run side by side, each file after the other. A test counts as passed on
``ok`` or a failing ``# TODO`` (as prove counts; a ``# SKIP`` is neither passed nor run);
tests a file planned but never reached (it died or timed out) count as run and failed.
The table per test dir goes to ``loadtest/results/posix.md`` (and ``posix.json``).

Usage: ``python -m loadtest.posix_conformance [--dirs chmod,mkdir] [--mounts mountd,rclone]``
(as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from clientlib.launcher import Process, free_port, http_ok, start_etcd, start_node, wait_until
from loadtest.bench_mount import Mounted
from loadtest.harness import cpu_seconds, load_avg, machine_info
from testkit.seaweed import start_seaweed

RESULTS = Path(__file__).parent / "results"
PJDFSTEST = Path(__file__).resolve().parent.parent / ".build" / "pjdfstest"
BUCKET = "posix"
MOUNTS = ("mountd", "rclone", "s3fs", "mountd-moto")
#: Seconds one .t file may take before it is killed (its remaining tests fail).
FILE_TIMEOUT = 180.0
#: Failed tests' lines kept per file, to tell why in docs/mount.md.
FAILURES_KEPT = 5
#: Characters kept of each (pjdfstest's PATH_MAX tests name paths of 4,095 bytes).
FAILURE_CHARS = 300

_TAP = re.compile(r"^(not ok|ok)\b(.*)$")
_PLAN = re.compile(r"^1\.\.(\d+)")


@dataclass
class Tally:
    """Tests of one test dir (or all of them) in one mount."""

    passed: int = 0
    run: int = 0
    skipped: int = 0
    #: The first failed tests' TAP lines ("chmod/00.t: not ok 5 - tried '...'").
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.passed += other.passed
        self.run += other.run
        self.skipped += other.skipped
        self.failures += other.failures


def tap_tally(output: str) -> Tally:
    """Count a .t file's TAP output: passed, run (planned, skips excluded) and skipped."""
    planned, seen, tally = 0, 0, Tally()
    for line in output.splitlines():
        if m := _PLAN.match(line):
            planned = int(m[1])
        elif m := _TAP.match(line):
            seen += 1
            if "# SKIP" in m[2].upper():
                tally.skipped += 1
            elif m[1] == "ok" or "# TODO" in m[2].upper():
                tally.passed += 1  # a failing TODO test is no failure (prove's rule)
            elif len(tally.failures) < FAILURES_KEPT:
                tally.failures.append(line)
    tally.run = max(planned, seen) - tally.skipped
    return tally


def run_file(test: Path, cwd: Path) -> Tally:
    """Run one .t file in ``cwd`` (its own process group, killed at FILE_TIMEOUT)."""
    proc = subprocess.Popen(
        ["/bin/sh", str(test)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=FILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    tally = tap_tally(out)
    name = f"{test.parent.name}/{test.name}"
    tally.failures = [f"{name}: {line}"[:FAILURE_CHARS] for line in tally.failures]
    if tally.run > tally.passed + len(tally.failures) and len(tally.failures) < FAILURES_KEPT:
        tally.failures.append(f"{name}: {tally.run - tally.passed} not reached or failed")
    return tally


def run_suite(mount: Path, dirs: list[str]) -> dict[str, Tally]:
    """Every .t file of ``dirs`` in a fresh directory of ``mount`` (named after it: the
    mounts share a bucket); a tally per dir."""
    work = mount / f"pjd-{mount.name}-{os.getpid()}"
    work.mkdir()
    out: dict[str, Tally] = {}
    for name in dirs:
        tally = Tally()
        for test in sorted((PJDFSTEST / "tests" / name).glob("*.t")):
            tally.add(run_file(test, work))
        out[name] = tally
        print(f"{mount.name:12} {name:16} {tally.passed}/{tally.run}", flush=True)
    return out


def s3_env(endpoint: str) -> dict[str, str]:
    """This process's environment, for a child that talks to the S3 server ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


def start_moto(work: Path) -> tuple[Process, str]:
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = Process("moto", [moto, "-H", "127.0.0.1", "-p", str(port)], work / "moto.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(url + "/moto-api/"), 30, "moto_server")
    return proc, url


def mountd_cmd(etcd: str, cluster: str, path: Path, log_level: str) -> list[str]:
    return [
        sys.executable, "-m", "mountd", f"s3://{BUCKET}", str(path), "--etcd", etcd,
        "--cluster", cluster, "--foreground", "--allow-other", "--log-level", log_level,
    ]  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    mounts = list(result["mounts"])
    lines = [
        "# pjdfstest over one S3 server per mount, in one run",
        "",
        "Tests passed / run per test dir (`python -m loadtest.posix_conformance`); SeaweedFS",
        "for all but `mountd-moto`. Generated; see docs/mount.md for what fails and why.",
        "",
        "| test dir | " + " | ".join(mounts) + " |",
        "|---|" + "---|" * len(mounts),
    ]
    for name in result["dirs"]:
        cells = [result["mounts"][m]["dirs"][name] for m in mounts]
        lines.append(f"| {name} | " + " | ".join(f"{c['passed']}/{c['run']}" for c in cells) + " |")
    totals = [result["mounts"][m]["total"] for m in mounts]
    lines.append(
        "| **total** | "
        + " | ".join(
            f"**{t['passed']}/{t['run']}** ({100 * t['passed'] / max(t['run'], 1):.1f}%)"
            for t in totals
        )
        + " |"
    )
    lines += ["", "| mount | seconds | CPU seconds of the mount process |", "|---|---|---|"]
    lines += [
        f"| {m} | {result['mounts'][m]['seconds']} | {result['mounts'][m]['cpu_s']} |"
        for m in mounts
    ]
    if "ratios" in result:
        lines += ["", "Ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items())]
    lines += [
        "",
        f"Load average at the end: {result['load_avg']}; {result['seconds']} s in all.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirs", help="comma-separated test dirs (default: all)")
    parser.add_argument("--mounts", default=",".join(MOUNTS), help="of " + ",".join(MOUNTS))
    parser.add_argument("--name", default="posix", help="results file stem")
    parser.add_argument("--log-level", default="WARNING", help="mountd's")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("posix_conformance: run as root (pjdfstest changes owners)")
    if not (PJDFSTEST / "pjdfstest").exists():
        sys.exit(f"posix_conformance: no {PJDFSTEST}/pjdfstest: run scripts/install.sh")
    all_dirs = sorted(p.name for p in (PJDFSTEST / "tests").iterdir() if p.is_dir())
    dirs = args.dirs.split(",") if args.dirs else all_dirs
    wanted = args.mounts.split(",")
    work = Path(tempfile.mkdtemp(prefix="posix-conformance-"))
    work.chmod(0o755)
    procs: list[Any] = []
    mounts: dict[str, Mounted] = {}
    started = time.perf_counter()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        weed = start_seaweed(work / "seaweed")
        procs.append(weed)
        weed.client().create_bucket(Bucket=BUCKET)
        moto, moto_url = start_moto(work)
        procs.append(moto)
        s3_client(moto_url).create_bucket(Bucket=BUCKET)
        etcd = start_etcd(work / "etcd")
        procs.append(etcd)
        for cluster, endpoint in (("sw", weed.endpoint), ("moto", moto_url)):
            procs.append(
                start_node(etcd.url, cluster, work / f"node-{cluster}", env=s3_env(endpoint))
            )
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            name: (mountd_cmd(etcd.url, cluster, work / name, args.log_level), s3_env(url))
            for name, cluster, url in (
                ("mountd", "sw", weed.endpoint),
                ("mountd-moto", "moto", moto_url),
            )
        }
        rclone_env = s3_env(weed.endpoint)
        rclone_env.update(
            RCLONE_CONFIG_SW_TYPE="s3",
            RCLONE_CONFIG_SW_PROVIDER="SeaweedFS",
            RCLONE_CONFIG_SW_ENDPOINT=weed.endpoint,
            RCLONE_CONFIG_SW_ACCESS_KEY_ID="testing",
            RCLONE_CONFIG_SW_SECRET_ACCESS_KEY="testing",
            RCLONE_CONFIG_SW_FORCE_PATH_STYLE="true",
            RCLONE_CONFIG="/dev/null",
        )
        commands["rclone"] = (
            ["rclone", "mount", f"sw:{BUCKET}", str(work / "rclone"), "--vfs-cache-mode",
             "full", "--allow-other", "--cache-dir", str(work / "rclone-cache")],
            rclone_env,
        )  # fmt: skip
        passwd = work / "s3fs.passwd"
        passwd.write_text("testing:testing\n")
        passwd.chmod(0o600)
        commands["s3fs"] = (
            ["s3fs", BUCKET, str(work / "s3fs"), "-f", "-o", f"passwd_file={passwd}", "-o",
             f"url={weed.endpoint}", "-o", "use_path_request_style", "-o", "allow_other"],
            dict(os.environ),
        )  # fmt: skip
        for name in wanted:
            cmd, env = commands[name]
            mounts[name] = Mounted(name, cmd, work / name, work / f"{name}.log", env=env)

        def one(name: str) -> dict[str, Any]:
            began = time.perf_counter()
            tallies = run_suite(mounts[name].path, dirs)
            total = Tally()
            for t in tallies.values():
                total.add(t)
            return {
                "dirs": {d: t.__dict__ for d, t in tallies.items()},
                "total": total.__dict__,
                "seconds": round(time.perf_counter() - began, 1),
                "cpu_s": round(cpu_seconds(mounts[name].proc.pid), 1),
            }

        with ThreadPoolExecutor(len(wanted)) as pool:
            runs = dict(zip(wanted, pool.map(one, wanted), strict=True))
    finally:
        for m in mounts.values():
            m.close()
        for proc in reversed(procs):
            proc.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {"dirs": dirs, "mounts": runs}
    totals = {m: r["total"] for m, r in runs.items()}
    ratios: dict[str, float] = {}
    for m in ("mountd", "mountd-moto"):
        if m in totals:
            ratios[f"{m}_pass_share"] = totals[m]["passed"] / max(totals[m]["run"], 1)
            if "rclone" in totals:
                ratios[f"{m}_vs_rclone"] = totals[m]["passed"] / max(totals["rclone"]["passed"], 1)
    result["ratios"] = ratios
    result["load_avg"] = load_avg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result.update(machine_info())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client of the server ``endpoint``, with the keys :func:`s3_env` gives."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


if __name__ == "__main__":
    main()
