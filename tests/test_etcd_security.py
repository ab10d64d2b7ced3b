"""etcd over TLS with authentication: nodes, cachectl and the Python API against a real
etcd that demands a trusted connection and credentials, and what they say when they lack
them (one line, never a traceback)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachenode.config import load_config
from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.cluster import nodes_prefix
from clientlib.errors import ConfigError
from clientlib.etcd import EtcdTarget, connect
from clientlib.launcher import Etcd, free_port, start_mount, start_node
from clientlib.status import list_nodes
from testkit import make_ca, start_etcd
from tests.conftest import node_metric, run_cachectl, wait_ring


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """etcd serving TLS only, with authentication on (users ``root`` and ``ringcache``)."""
    proc = start_etcd(tmp_path_factory.mktemp("secure-etcd"), tls=True, auth=True)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign etcd's certificate."""
    return make_ca(tmp_path_factory.mktemp("other-ca"), "not-etcds-ca")[0]


def cachenode_fails(*args: str, cache_dir: Path) -> str:
    """Run a cachenode expected to exit at start; returns its stderr."""
    cmd = [sys.executable, "-m", "cachenode", "--listen", f"127.0.0.1:{free_port()}",
           "--cache-dir", f"{cache_dir}:64MiB", "--cluster", "refused", *args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, timeout=60, text=True)
    assert result.returncode != 0, result.stderr
    return result.stderr


def one_line_error(stderr: str, program: str) -> str:
    """The error line a CLI ended with, after checking it is one line and no traceback."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"{program}: error: etcd at https://127.0.0.1:"), stderr
    return last


async def test_node_cachectl_and_client_work_with_the_ca_and_credentials(
    secure_etcd, s3, bucket, tmp_path, cluster_name
):
    etcd = secure_etcd
    data = os.urandom(BS + 100)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    node = start_node(etcd.url, cluster_name, tmp_path / "n0", extra=etcd.flags("ringcache"))
    try:
        # The node registered with the user whose role covers /ringcache/ only.
        async with connect(etcd.target("root")) as admin:
            records = await admin.get_prefix(nodes_prefix(cluster_name))
        assert [json.loads(kv.value)["addr"] for kv in records] == [node.addr]

        async with CacheClient(etcd.target("ringcache"), cluster_name) as client:
            await wait_ring(client, 1)
            assert await client.read(f"s3://{bucket}/k") == data
        # Both blocks came through the node (a miss each, filled from the origin) ...
        assert node_metric(node, "ringcache_block_misses_total") == 2
        async with CacheClient(etcd.target("ringcache"), cluster_name) as client:
            await wait_ring(client, 1)
            assert await client.read(f"s3://{bucket}/k") == data
        # ... and a second client is served both from its store.
        assert node_metric(node, "ringcache_block_hits_total") == 2

        status = await run_cachectl(*etcd.flags("ringcache"), "--cluster", cluster_name,
                                    "status", "--json")  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert [n["addr"] for n in json.loads(status.stdout)["nodes"]] == [node.addr]

        # The password may come from the environment instead of a file.
        os.environ["RINGCACHE_ETCD_PASSWORD"] = etcd.users["ringcache"]
        try:
            status = await run_cachectl("--etcd", etcd.url, "--etcd-ca", str(etcd.ca),
                                        "--etcd-user", "ringcache", "--cluster", cluster_name,
                                        "status", "--json")  # fmt: skip
        finally:
            del os.environ["RINGCACHE_ETCD_PASSWORD"]
        assert status.returncode == 0, status.stderr
        assert len(json.loads(status.stdout)["nodes"]) == 1
    finally:
        node.stop()


async def test_a_mount_reads_through_the_cluster_of_a_secured_etcd(
    secure_etcd, s3, bucket, tmp_path, cluster_name
):
    etcd = secure_etcd
    data = os.urandom(BS // 3)
    s3.put_object(Bucket=bucket, Key="dir/f", Body=data)
    node = start_node(etcd.url, cluster_name, tmp_path / "n0", extra=etcd.flags("ringcache"))
    mount = None
    try:
        mount = await asyncio.to_thread(
            start_mount, f"s3://{bucket}", tmp_path / "mnt", etcd.url, cluster_name,
            *etcd.flags("ringcache"),
        )  # fmt: skip
        assert (tmp_path / "mnt" / "dir" / "f").read_bytes() == data
        assert node_metric(node, "ringcache_block_misses_total") == 1
    finally:
        if mount is not None:
            mount.stop()
        node.stop()


async def test_without_credentials_each_part_fails_with_one_line(
    secure_etcd, tmp_path, cluster_name
):
    etcd = secure_etcd
    no_user = ["--etcd", etcd.url, "--etcd-ca", str(etcd.ca)]

    result = await run_cachectl(*no_user, "--cluster", cluster_name, "status")
    assert result.returncode == 1
    assert "refused us (etcdserver: user name is empty)" in one_line_error(
        result.stderr.decode(), "cachectl"
    )

    wrong_password = tmp_path / "wrong-password"
    wrong_password.write_text("not-the-password\n")
    wrong = ["--etcd-user", "ringcache", "--etcd-password-file", str(wrong_password)]
    result = await run_cachectl(*no_user, *wrong, "--cluster", cluster_name, "status")
    assert result.returncode == 1
    assert "authentication failed" in one_line_error(result.stderr.decode(), "cachectl")

    stderr = await asyncio.to_thread(cachenode_fails, *no_user, cache_dir=tmp_path / "n")
    assert "refused us" in one_line_error(stderr, "cachenode")

    with pytest.raises(ConfigError, match="refused us"):
        async with CacheClient(etcd.target(), cluster_name):
            pass


async def test_an_etcd_whose_certificate_is_not_trusted_is_refused_with_one_line(
    secure_etcd, wrong_ca, tmp_path, cluster_name
):
    etcd = secure_etcd
    untrusted = ["--etcd", etcd.url, "--etcd-ca", str(wrong_ca), *etcd.flags("ringcache")[4:]]

    result = await run_cachectl(*untrusted, "--cluster", cluster_name, "status")
    assert result.returncode == 1
    line = one_line_error(result.stderr.decode(), "cachectl")
    assert "TLS failed (CERTIFICATE_VERIFY_FAILED" in line

    stderr = await asyncio.to_thread(cachenode_fails, *untrusted, cache_dir=tmp_path / "n")
    assert "TLS failed" in one_line_error(stderr, "cachenode")

    for ca in (wrong_ca, None):  # None: the system's CAs, which do not know etcd's either
        target = dataclasses.replace(etcd.target("ringcache"), ca=ca)
        with pytest.raises(ConfigError, match="TLS failed"):
            async with CacheClient(target, cluster_name):
                pass
    # Plain http:// to a TLS-only etcd gets nowhere either.
    with pytest.raises(ConfigError, match="unreachable"):
        await list_nodes(etcd.url.replace("https:", "http:"), cluster_name)


async def test_a_node_authenticates_again_after_etcd_restarts(tmp_path, s3, bucket, cluster_name):
    """etcd forgets its auth tokens when it restarts: a node whose record is gone must log
    in again to register, or it silently stays out of the ring."""
    etcd = start_etcd(tmp_path / "etcd", tls=True, auth=True)
    node = None
    try:
        node = start_node(etcd.url, cluster_name, tmp_path / "n0",
                          extra=[*etcd.flags("ringcache"), "--lease-ttl", "3"])  # fmt: skip
        etcd.restart()
        # The record goes (as when its lease expires during a long outage); the node
        # notices at its next keepalive and registers again, with a new token.
        async with connect(etcd.target("root")) as admin:
            (record,) = await admin.get_prefix(nodes_prefix(cluster_name))
            await admin.revoke_lease(record.lease)
        async with CacheClient(etcd.target("ringcache"), cluster_name) as client:
            await wait_ring(client, 1)
            s3.put_object(Bucket=bucket, Key="k", Body=b"after the restart")
            assert await client.read(f"s3://{bucket}/k") == b"after the restart"
        assert node_metric(node, "ringcache_block_misses_total") == 1
    finally:
        if node is not None:
            node.stop()
        etcd.stop()


async def test_a_client_certificate_alone_authenticates_as_its_common_name(tmp_path, cluster_name):
    """With ``--client-cert-auth``, etcd takes the user from the certificate's CN."""
    etcd = start_etcd(tmp_path / "etcd", client_cert_auth=True, auth=True)
    node = None
    try:
        node = start_node(etcd.url, cluster_name, tmp_path / "n0", extra=etcd.flags(cert=True))
        status = await run_cachectl(*etcd.flags(cert=True), "--cluster", cluster_name,
                                    "status", "--json")  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert [n["addr"] for n in json.loads(status.stdout)["nodes"]] == [node.addr]
        # Without the certificate the TLS handshake itself is refused.
        with pytest.raises(ConfigError, match=r"TLS failed \(Unwrap failed .*--etcd-cert"):
            async with CacheClient(etcd.target(), cluster_name):
                pass
    finally:
        if node is not None:
            node.stop()
        etcd.stop()


def test_etcd_settings_are_checked_before_anything_starts(tmp_path, secure_etcd):
    etcd = secure_etcd
    base = ["--listen", "127.0.0.1:1", "--cache-dir", f"{tmp_path}/c:64MiB"]

    def error(*args: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config([*base, *args])
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "--etcd-cert and --etcd-key go together" in error(
        "--etcd", etcd.url, "--etcd-cert", str(etcd.client_cert)
    )
    assert "needs an https:// --etcd URL" in error(
        "--etcd", "http://127.0.0.1:2379", "--etcd-ca", str(etcd.ca)
    )
    assert f"--etcd-ca {tmp_path}/nope.pem: No such file" in error(
        "--etcd", etcd.url, "--etcd-ca", str(tmp_path / "nope.pem")
    )
    (tmp_path / "not-pem").write_text("hello")
    assert "not a PEM file" in error("--etcd", etcd.url, "--etcd-ca", str(tmp_path / "not-pem"))
    assert "needs a password" in error("--etcd", etcd.url, "--etcd-user", "ringcache")
    assert "--etcd-password-file" in error(
        "--etcd", etcd.url, "--etcd-user", "u", "--etcd-password-file", str(tmp_path / "none")
    )
    assert "bad etcd URL" in error("--etcd", "ftp://127.0.0.1:2379")
    # https without a CA is allowed: the system trust store then decides.
    config = load_config([*base, "--etcd", etcd.url])
    assert config.etcd == EtcdTarget(etcd.url)
    # The password is never part of what is shown of a target.
    assert etcd.users["ringcache"] not in repr(etcd.target("ringcache"))
