"""Faults under a live mount: etcd away at start, every node dead, S3 refusing uploads,
mountd killed with a writer open, and the download limit on the origin fallback.

Real processes throughout: etcd, cachenode and mountd are killed or stopped, and S3 is a
proxy in front of moto that answers 503 SlowDown (see ``S3Proxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time

import pytest

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import mounted
from clientlib.launcher import start_mount as start_local_mount
from testkit import S3Proxy
from tests.conftest import Cluster

MiB = 1024 * 1024


def s3_bytes(s3, bucket: str, key: str) -> bytes | None:  # type: ignore[no-untyped-def]
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def test_mount_comes_up_without_etcd_reads_the_origin_and_uses_the_cluster_once_etcd_is_back(
    private_etcd, mount, s3, bucket, tmp_path, cluster_name
):
    objects = {f"f{i:02d}": os.urandom(64 * 1024) for i in range(60)}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cluster = Cluster(private_etcd, cluster_name, tmp_path)
    try:
        cluster.add()
        private_etcd.stop()
        m = mount(cluster, f"s3://{bucket}")  # etcd is down: the mount still comes up
        keys = iter(objects)
        key = next(keys)
        assert (m.path / key).read_bytes() == objects[key]
        assert m.metric("ringcache_client_block_reads_total", 'source="origin"') == 1
        assert m.metric("ringcache_client_block_reads_total", 'source="peer"') == 0

        private_etcd.start()
        private_etcd.wait_healthy()
        # The mount finds the ring once etcd answers: fresh objects then come from the node.
        deadline = time.monotonic() + 45
        while m.metric("ringcache_client_block_reads_total", 'source="peer"') == 0:
            assert time.monotonic() < deadline, "the mount never used the cluster again"
            key = next(keys)
            assert (m.path / key).read_bytes() == objects[key]
            time.sleep(0.5)
        key = next(keys)
        peer = m.metric("ringcache_client_block_reads_total", 'source="peer"')
        assert (m.path / key).read_bytes() == objects[key]
        assert m.metric("ringcache_client_block_reads_total", 'source="peer"') == peer + 1
    finally:
        cluster.stop()


def test_reads_keep_working_from_the_origin_when_every_node_dies(make_cluster, mount, s3, bucket):
    files = {f"f{i}.bin": os.urandom(2 * BS + 1000) for i in range(3)}
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cluster = make_cluster(3)
    m = mount(cluster, f"s3://{bucket}")
    assert (m.path / "f0.bin").read_bytes() == files["f0.bin"]
    assert m.metric("ringcache_client_block_reads_total", 'source="peer"') >= 3
    for node in cluster.nodes:
        node.kill()  # SIGKILL: their records stay in etcd until the leases expire
    origin = m.metric("ringcache_client_block_reads_total", 'source="origin"')
    for key in ("f1.bin", "f2.bin"):
        assert (m.path / key).read_bytes() == files[key]
    assert m.metric("ringcache_client_block_reads_total", 'source="origin"') >= origin + 6


def test_origin_fallback_reads_of_a_mount_count_against_its_download_limit(
    make_cluster, mount, s3, bucket
):
    size, rate = 3 * BS, 4 * MiB  # 12 MiB at 4 MiB/s: >= 2 s after the 4 MiB burst
    data = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    cluster = make_cluster(1)
    m = mount(cluster, f"s3://{bucket}", "--download-limit", "4MiB")
    cluster.nodes[0].kill()
    started = time.monotonic()
    assert (m.path / "big.bin").read_bytes() == data
    elapsed = time.monotonic() - started
    assert m.metric("ringcache_client_block_reads_total", 'source="origin"') == 3
    assert m.metric("ringcache_client_block_reads_total", 'source="peer"') == 0
    # Every byte that came from the origin went through the mount's download bucket.
    assert m.metric("ringcache_mount_limited_bytes_total", 'direction="download"') == size
    floor = (size - rate) / rate - 0.1  # the bucket may start full: one second's worth
    assert elapsed >= floor, f"{size} bytes from the origin in {elapsed:.2f}s at {rate} B/s"


@contextlib.asynccontextmanager
async def mount_behind(proxy, make_cluster, bucket, tmp_path, *args, **env):  # type: ignore[no-untyped-def]
    """A mount of ``bucket`` whose S3 is ``proxy`` (started here), with mountd's extra
    ``args`` and ``env``; stopped with the proxy at the end. Every call into the mount must
    come from a thread: the proxy answers on this loop."""
    await proxy.start()
    cluster = make_cluster(1)
    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, **env)
    m = await asyncio.to_thread(
        start_local_mount,
        f"s3://{bucket}",
        tmp_path / "mnt",
        cluster.etcd.url,
        cluster.name,
        *args,
        env=env,
    )
    try:
        yield m
    finally:
        await asyncio.to_thread(m.stop)
        await proxy.stop()


async def until_uploading(proxy: S3Proxy, closing: asyncio.Task[None]) -> None:
    """Once the close in ``closing`` has an upload at the origin."""
    while proxy.writes_in_flight == 0:
        assert not closing.done(), "close returned without an upload"
        await asyncio.sleep(0.01)


async def test_a_write_during_an_upload_of_the_same_file_waits_and_is_uploaded_next(
    make_cluster, s3, s3_endpoint, bucket, tmp_path
):
    """One handle's close uploads while another handle writes the same file (the kernel
    holds no lock over a flush, unlike fsync): the write may neither tear the object
    being uploaded nor be marked clean by that upload."""
    first, second = os.urandom(300 * 1024), os.urandom(300 * 1024)
    proxy = S3Proxy(s3_endpoint, delay=1.0)  # every answer a second late: an upload lasts
    async with mount_behind(proxy, make_cluster, bucket, tmp_path) as m:
        path = m.path / "shared.bin"
        one = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        two = await asyncio.to_thread(os.open, path, os.O_WRONLY)
        try:
            await asyncio.to_thread(os.write, one, first)
            closing = asyncio.create_task(asyncio.to_thread(os.close, one))
            await until_uploading(proxy, closing)
            await asyncio.to_thread(os.pwrite, two, second, 0)
            await closing
            assert s3_bytes(s3, bucket, "shared.bin") == first  # not torn
        finally:
            await asyncio.to_thread(os.close, two)  # uploads the write that waited
        assert s3_bytes(s3, bucket, "shared.bin") == second


async def test_an_unlink_during_an_upload_of_the_file_leaves_it_deleted(
    make_cluster, s3, s3_endpoint, bucket, tmp_path
):
    """A multipart upload (three requests, each a second late) under way at close, and
    the file unlinked meanwhile: the upload may not complete after the delete."""
    proxy = S3Proxy(s3_endpoint, delay=1.0)  # every answer a second late: an upload lasts
    async with mount_behind(proxy, make_cluster, bucket, tmp_path) as m:
        path = m.path / "gone.bin"
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        await asyncio.to_thread(os.write, fd, os.urandom(20 * MiB))  # multipart above 16 MiB
        closing = asyncio.create_task(asyncio.to_thread(os.close, fd))
        await until_uploading(proxy, closing)
        await asyncio.to_thread(os.unlink, path)
        await closing
        assert not await asyncio.to_thread(path.exists)
        assert s3_bytes(s3, bucket, "gone.bin") is None
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_upload_refused_with_503_is_the_writers_error_and_a_retry_succeeds(
    make_cluster, s3, s3_endpoint, bucket, tmp_path
):
    (tmp_path / "spool").mkdir()
    args = ("--spool-dir", str(tmp_path / "spool"))
    proxy = S3Proxy(s3_endpoint)
    big, small = os.urandom(20 * MiB), os.urandom(1000)  # multipart above 16 MiB
    # Two attempts per request, not six: the same refusal, without a minute of backoff.
    async with mount_behind(
        proxy, make_cluster, bucket, tmp_path, *args, AWS_MAX_ATTEMPTS="2"
    ) as m:
        await asyncio.to_thread((m.path / "before.bin").write_bytes, b"acknowledged")
        proxy.fail_writes = -1  # every PUT and POST: 503 SlowDown

        big_path = m.path / "big.bin"
        fd = await asyncio.to_thread(
            os.open, big_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
        )
        try:
            await asyncio.to_thread(os.write, fd, big)
            with pytest.raises(OSError) as exc:
                await asyncio.to_thread(os.fsync, fd)
            assert exc.value.errno == errno.EIO
            assert proxy.write_failures > 0
            assert s3_bytes(s3, bucket, "big.bin") is None
            proxy.fail_writes = 0  # S3 is back: the same fsync again succeeds
            await asyncio.to_thread(os.fsync, fd)
            assert s3_bytes(s3, bucket, "big.bin") == big
        finally:
            await asyncio.to_thread(os.close, fd)

        proxy.fail_writes, failures = -1, proxy.write_failures
        with pytest.raises(OSError) as exc:
            await asyncio.to_thread((m.path / "small.bin").write_bytes, small)
        assert exc.value.errno == errno.EIO  # close() did not acknowledge it
        assert proxy.write_failures > failures
        assert s3_bytes(s3, bucket, "small.bin") is None
        proxy.fail_writes = 0
        await asyncio.to_thread((m.path / "small.bin").write_bytes, small)  # the retry
        assert s3_bytes(s3, bucket, "small.bin") == small

        assert s3_bytes(s3, bucket, "before.bin") == b"acknowledged"
        assert await asyncio.to_thread((m.path / "big.bin").read_bytes) == big
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert list((tmp_path / "spool").iterdir()) == []  # no spool left once closed
    assert not mounted(m.path)


def test_sigkill_with_a_writer_open_keeps_what_close_and_fsync_acknowledged(
    make_cluster, mount, s3, bucket, tmp_path
):
    spool = tmp_path / "spool"
    spool.mkdir()
    cluster = make_cluster(1)
    m = mount(cluster, f"s3://{bucket}", "--spool-dir", str(spool))
    closed, synced, unsynced, pending = (os.urandom(300_000) for _ in range(4))
    (m.path / "closed.bin").write_bytes(closed)
    fd_synced = os.open(m.path / "synced.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd_synced, synced)
    os.fsync(fd_synced)
    os.write(fd_synced, unsynced)  # written after the fsync: never acknowledged
    fd_pending = os.open(m.path / "pending.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd_pending, pending)

    m.proc.kill()  # SIGKILL: no upload, no unmount
    for fd in (fd_synced, fd_pending):
        with pytest.raises(OSError) as exc:
            os.write(fd, b"more")
        assert exc.value.errno == errno.ENOTCONN  # the writer sees the mount is gone
        with pytest.raises(OSError):
            os.close(fd)  # the descriptor is released all the same
    assert mounted(m.path)  # a dead FUSE mount stays in the mount table ...
    m.unmount()
    assert not mounted(m.path)  # ... until the launcher detaches it

    # What close() and fsync() acknowledged is in S3 and in a new mount; nothing else is.
    again = mount(cluster, f"s3://{bucket}", "--spool-dir", str(spool))
    assert (again.path / "closed.bin").read_bytes() == closed
    assert (again.path / "synced.bin").read_bytes() == synced
    assert not (again.path / "pending.bin").exists()
    assert s3_bytes(s3, bucket, "closed.bin") == closed
    assert s3_bytes(s3, bucket, "synced.bin") == synced
    assert s3_bytes(s3, bucket, "pending.bin") is None
    # The unacknowledged bytes are still on this machine, in the killed mount's spool files.
    left = sorted(p.read_bytes() for p in spool.iterdir())
    assert left == sorted([synced + unsynced, pending])


def test_foreground_mountd_unmounts_cleanly_on_sighup(make_cluster, mount, bucket):
    m = mount(make_cluster(1), f"s3://{bucket}")
    m.proc.signal(signal.SIGHUP)  # what a closed terminal sends
    assert m.proc.popen.wait(15) == 0  # type: ignore[union-attr]
    assert not mounted(m.path)
