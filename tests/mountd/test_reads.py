"""Reads through the mount: exact bytes, only the blocks needed, page cache, node failure."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from clientlib import CacheClient
from clientlib.blockfile import parse_name
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import Node, wait_until
from mountd.prefetch import DENSE_AFTER, PULL_AFTER
from mountd.readahead import READ_AHEAD_KB
from tests.conftest import Cluster, cachectl, node_metric, wait_ring
from tests.mountd.conftest import read_twice

SIZE = 3 * BS + 12345  # the last block is short


def payload(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture
def obj(s3, bucket):  # type: ignore[no-untyped-def]
    data = payload(SIZE)
    s3.put_object(Bucket=bucket, Key="bars/2024.bin", Body=data)
    return data


def block_reads(m) -> float:  # type: ignore[no-untyped-def]
    """Blocks the mount fetched from outside the machine (peers or origin)."""
    return m.metric("ringcache_client_block_reads_total", 'source="peer"') + m.metric(
        "ringcache_client_block_reads_total", 'source="origin"'
    )


def owner_of(cluster: Cluster, url: str, index: int) -> Node:
    """The node that owns block ``index`` of ``url`` on the cluster's ring."""

    async def find() -> Node:
        async with CacheClient(cluster.etcd.url, cluster.name) as client:
            await wait_ring(client, len(cluster.nodes))
            ref = client.block_ref(await client.stat(url), index)
            owner = client.ring.owners(ref.id, 1)[0]
        return next(n for n in cluster.nodes if n.addr == owner.addr)

    return asyncio.run(find())


def test_whole_and_offset_reads_equal_the_object(make_cluster, mount, bucket, obj):
    m = mount(make_cluster(2), f"s3://{bucket}")
    path = m.path / "bars" / "2024.bin"
    assert path.read_bytes() == obj
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in [(0, 1), (BS - 1, 2), (BS - 5, BS + 10), (SIZE - 3, 10), (SIZE, 5)]:
            assert os.pread(fd, length, offset) == obj[offset : offset + length]
    finally:
        os.close(fd)


def test_small_random_reads_fetch_only_the_bytes_they_need(make_cluster, mount, s3, bucket):
    """A jump into a file asks the owner for a byte range, not the block: the node sends
    the few KiB read (it still caches the whole block from the origin)."""
    data = payload(8 * BS)
    s3.put_object(Bucket=bucket, Key="t.parquet", Body=data)
    cluster = make_cluster(1)
    m = mount(cluster, f"s3://{bucket}")
    with open(m.path / "t.parquet", "rb") as fh:
        fh.seek(-65536, os.SEEK_END)  # a Parquet footer
        assert fh.read() == data[-65536:]
        fh.seek(3 * BS + 100)
        assert fh.read(4096) == data[3 * BS + 100 : 3 * BS + 4196]
        fh.seek(5 * BS + 7)  # a block the node has not cached yet, then one it has
        assert fh.read(100) == data[5 * BS + 7 : 5 * BS + 107]
    sent = node_metric(cluster.nodes[0], "ringcache_served_bytes_total")
    assert 65536 + 4096 <= sent <= BS  # the kernel reads ahead a little; whole blocks: 12 MiB
    assert node_metric(cluster.nodes[0], "ringcache_origin_bytes_total") == 3 * BS
    hits = node_metric(cluster.nodes[0], "ringcache_block_hits_total")
    with open(m.path / "t.parquet", "rb") as fh:
        fh.seek(3 * BS + 2_000_000)  # the rest of a block the node cached whole: a hit
        assert fh.read(5000) == data[3 * BS + 2_000_000 : 3 * BS + 2_005_000]
    assert node_metric(cluster.nodes[0], "ringcache_block_hits_total") > hits
    assert node_metric(cluster.nodes[0], "ringcache_origin_bytes_total") == 3 * BS
    assert (m.path / "t.parquet").read_bytes() == data


@contextlib.contextmanager
def _random_reads(path: Path, data: bytes) -> Iterator[Callable[[int, int], None]]:
    """The file at ``path`` (holding ``data``) open for random reads (kernel read-ahead
    off), as ``read(block, k)``: :func:`_read_page`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        yield functools.partial(_read_page, fd, data)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _random_reader(  # type: ignore[no-untyped-def]
    make_cluster, mount, s3, bucket: str, key: str, blocks: int, *mount_args: str
) -> Iterator[tuple[Callable[[int, int], None], Callable[[], float]]]:
    """A new object ``key`` of ``blocks`` blocks, read at random through a mount (with
    ``mount_args``) over a one-node cluster: ``(read, served)``, ``read`` as
    :func:`_random_reads` gives it and ``served()`` the bytes the node has sent."""
    data = payload(blocks * BS)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    cluster = make_cluster(1)
    m = mount(cluster, f"s3://{bucket}", *mount_args)
    served = functools.partial(node_metric, cluster.nodes[0], "ringcache_served_bytes_total")
    with _random_reads(m.path / key, data) as read:
        yield read, served


def _read_page(fd: int, data: bytes, block: int, k: int) -> None:
    """Random read ``k`` of ``block``: a whole page, a different one for each ``k``."""
    offset = block * BS + (k * 125 + 1) * 4096
    assert os.pread(fd, 4096, offset) == data[offset : offset + 4096]


def test_a_block_random_reads_keep_coming_back_to_is_pulled_whole_once(
    make_cluster, mount, s3, bucket
):
    """Random reads cost their bytes until a block has had PULL_AFTER of them; then the
    block is pulled whole, once, and later reads of it are served by the mount."""
    with _random_reader(make_cluster, mount, s3, bucket, "r.bin", 4) as (read, served):
        for k in range(PULL_AFTER - 1):  # jumps between blocks 1 and 3: ranges only
            read(1, k)
            read(3, k)
        assert served() < BS
        read(1, PULL_AFTER - 1)  # block 1's last range read: it is pulled whole
        wait_until(lambda: served() >= BS, 20, "pull")
        before = served()
        assert before < 2 * BS  # block 1 only
        read(1, PULL_AFTER)
        read(3, PULL_AFTER)  # block 3's last range read pulls it too
        wait_until(lambda: served() >= before + BS, 20, "pull")
        read(1, PULL_AFTER + 1)
        assert served() < before + BS + 8192


def test_a_file_whose_random_reads_came_back_to_blocks_has_its_other_blocks_pulled_at_once(
    make_cluster, mount, s3, bucket
):
    """Once random reads came back PULL_AFTER times to DENSE_AFTER blocks of a file, the
    file is read densely: another block of it is pulled whole at its first range read."""
    with _random_reader(make_cluster, mount, s3, bucket, "d.bin", 8) as (read, served):
        pulled = [1, 3, 5, 7][:DENSE_AFTER]
        for k in range(PULL_AFTER):  # jumps between them: each pulled at its last
            for block in pulled:
                read(block, k)
        want = len(pulled) * BS
        wait_until(lambda: served() >= want, 20, "pulls")
        before = served()
        assert before < want + BS
        read(6, 0)  # a block's first range read: pulled whole too
        wait_until(lambda: served() >= before + BS, 20, "pull")

        def served_by_the_mount() -> bool:
            sent = served()
            read(6, 1)
            return served() == sent

        wait_until(served_by_the_mount, 20, "block 6 served by the mount")
        # Blocks 1, 3 and 6 and the range reads before their pulls; no read-ahead: the
        # reads were never a stream.
        assert served() < 3 * BS + 65536


def test_random_reads_of_a_file_larger_than_memory_pull_its_blocks_to_the_disk_tier(
    make_cluster, mount, s3, bucket, tmp_path
):
    """A file larger than the memory tier but not the disk tier: a block random reads
    keep coming back to is pulled whole into the disk tier, and read from there after."""
    tier = tmp_path / "tier"

    def blocks_on_disk() -> int:
        return sum(1 for p in tier.glob("*/*") if not p.name.endswith(".tmp"))

    options = ("--memory-cache", f"{BS}", "--local-cache", f"{tier}:64MiB")
    reader = _random_reader(make_cluster, mount, s3, bucket, "big.bin", 6, *options)
    with reader as (read, served):
        for k in range(PULL_AFTER - 1):  # jumps between blocks 1 and 3: ranges only
            read(1, k)
            read(3, k)
        assert blocks_on_disk() == 0
        read(1, PULL_AFTER - 1)  # block 1's last range read: pulled whole, to the disk
        wait_until(lambda: blocks_on_disk() == 1, 20, "block 1 on the disk tier")
        # From the disk tier: nothing more from the node (a jump to block 5 between two
        # reads of block 1).
        for k in (PULL_AFTER, PULL_AFTER + 1):
            sent = served()
            read(1, k)
            assert served() == sent
            read(5, k)


def test_mounts_reading_one_cold_file_at_once_pull_it_from_the_origin_once(
    make_cluster, mount, s3, bucket
):
    data = payload(SIZE)
    s3.put_object(Bucket=bucket, Key="shared.bin", Body=data)
    cluster = make_cluster(2)
    mounts = [mount(cluster, f"s3://{bucket}") for _ in range(3)]
    with ThreadPoolExecutor(len(mounts)) as pool:
        got = list(pool.map(lambda m: (m.path / "shared.bin").read_bytes(), mounts))
    assert all(g == data for g in got)
    # Every origin read is a node's, or a mount's own fallback when no node answers.
    nodes_bytes = sum(node_metric(n, "ringcache_origin_bytes_total") for n in cluster.nodes)
    nodes_gets = sum(node_metric(n, "ringcache_origin_requests_total") for n in cluster.nodes)
    fallbacks = sum(
        m.metric("ringcache_client_block_reads_total", 'source="origin"') for m in mounts
    )
    assert (nodes_bytes, nodes_gets, fallbacks) == (SIZE, 4, 0)


def test_page_cache_is_kept_across_opens_until_the_object_changes(make_cluster, mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="v.bin", Body=b"old" * 1000)
    m = mount(make_cluster(1), f"s3://{bucket}")
    path = m.path / "v.bin"
    assert path.read_bytes() == b"old" * 1000
    reads = block_reads(m)
    assert path.read_bytes() == b"old" * 1000
    assert block_reads(m) == reads  # served by the kernel's page cache: no FUSE read
    s3.put_object(Bucket=bucket, Key="v.bin", Body=b"new" * 1000)
    time.sleep(1.5)  # past --attr-ttl
    assert path.read_bytes() == b"new" * 1000


def test_sequential_read_prefetches_blocks_ahead(make_cluster, mount, s3, bucket):
    data = payload(8 * BS)
    s3.put_object(Bucket=bucket, Key="seq.bin", Body=data)
    cluster = make_cluster(2)
    m = mount(cluster, f"s3://{bucket}", "--prefetch-blocks", "4")
    with open(m.path / "seq.bin", "rb", buffering=0) as fh:
        assert fh.read(BS + 65536) == data[: BS + 65536]
        # The reader is in block 1: blocks 2.. are on their way without being asked for.
        deadline = time.monotonic() + 10
        while block_reads(m) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert block_reads(m) >= 5
        assert fh.read() == data[BS + 65536 :]
    assert block_reads(m) == 8


def test_killed_cache_node_does_not_fail_a_read_in_progress(make_cluster, mount, s3, bucket):
    data = payload(12 * BS)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    cluster = make_cluster(3)
    m = mount(cluster, f"s3://{bucket}", "--prefetch-blocks", "2")
    # The owner of block 8, which the mount has neither read nor prefetched at the kill.
    victim = owner_of(cluster, f"s3://{bucket}/big.bin", 8)
    got = bytearray()
    with open(m.path / "big.bin", "rb", buffering=0) as fh:
        while chunk := fh.read(1024 * 1024):
            got += chunk
            if len(got) == 4 * BS:
                threading.Thread(target=victim.signal, args=(signal.SIGKILL,)).start()
    assert bytes(got) == data
    assert not victim.alive() or victim.popen.wait(5) is not None  # type: ignore[union-attr]
    assert m.metric("ringcache_client_fallbacks_total") > 0  # the dead owner was asked


def test_pandas_reads_csv_and_parquet_from_the_mount(make_cluster, mount, s3, bucket, tmp_path):
    frame = pd.DataFrame(
        {"ticker": ["AAPL", "MSFT", "GOOG"] * 1000, "px": [float(i) for i in range(3000)]}
    )
    frame.to_csv(tmp_path / "bars.csv", index=False)
    frame.to_parquet(tmp_path / "bars.parquet")
    for name in ("bars.csv", "bars.parquet"):
        s3.put_object(Bucket=bucket, Key=f"data/{name}", Body=(tmp_path / name).read_bytes())
    m = mount(make_cluster(1), f"s3://{bucket}")
    pd.testing.assert_frame_equal(pd.read_csv(m.path / "data" / "bars.csv"), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(m.path / "data" / "bars.parquet"), frame)


def test_local_disk_tier_serves_blocks_after_the_nodes_are_gone(
    make_cluster, mount, bucket, obj, tmp_path
):
    cluster = make_cluster(1)
    tier = f"{tmp_path}/tier:64MiB"
    first = mount(cluster, f"s3://{bucket}", "--local-cache", tier)
    assert read_twice(first.path / "bars" / "2024.bin") == obj  # the second stream stores
    first.unmount()
    cluster.stop()
    second = mount(cluster, f"s3://{bucket}", "--local-cache", tier)
    with open(second.path / "bars" / "2024.bin", "rb") as fh:  # jumps: parts of blocks
        for offset in (len(obj) - 65536, 2 * BS + 12345, BS + 7):
            assert os.pread(fh.fileno(), 65536, offset) == obj[offset : offset + 65536]
    assert (second.path / "bars" / "2024.bin").read_bytes() == obj
    # Nothing asked of the client, not even its memory: all from the disk tier.
    assert second.metric("ringcache_client_block_reads_total") == 0


def _tier_blocks(root: Path) -> int:
    """Block files in a local disk tier's directory."""
    return sum(parse_name(os.fsencode(path.name)) is not None for path in root.glob("*/*"))


def test_a_file_larger_than_the_disk_tier_read_through_is_not_kept_there(
    make_cluster, mount, s3, bucket, obj, tmp_path
):
    """Sequential reads of a file larger than ``--local-cache`` leave none of its
    blocks there, not even from the second stream through it on (read again, it would
    have evicted itself ahead of the pass in the LRU tier); a file that fits is kept
    whole."""
    large = payload(5 * BS)
    s3.put_object(Bucket=bucket, Key="bars/all.bin", Body=large)
    cluster = make_cluster(1)
    tier = tmp_path / "tier"
    options = ("--local-cache", f"{tier}:16MiB")
    first = mount(cluster, f"s3://{bucket}", *options)
    assert read_twice(first.path / "bars" / "all.bin") == large
    first.unmount()  # after the tier's writes
    assert _tier_blocks(tier) == 0
    second = mount(cluster, f"s3://{bucket}", *options)
    assert read_twice(second.path / "bars" / "2024.bin") == obj
    second.unmount()
    assert _tier_blocks(tier) == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may raise a bdi's read-ahead")
def test_the_mount_reads_ahead_so_the_kernel_asks_in_1_mib_requests(make_cluster, mount, bucket):
    """The read-ahead must be raised after the kernel took FUSE INIT, whose 128 KiB
    answer would undo it (every read then reached mountd as 128 KiB)."""
    m = mount(make_cluster(1), f"s3://{bucket}")
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    device = next(line.split()[2] for line in mountinfo if line.split()[4] == str(m.path))
    read_ahead = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    wait_until(lambda: read_ahead.read_text().strip() == str(READ_AHEAD_KB), 10, "read-ahead")


def test_a_block_size_change_under_an_open_file_never_mixes_geometries(
    make_cluster, mount, s3, bucket
):
    """An open file is cut into blocks of the size it was opened with; when the cluster's
    block size changes under it, its reads still fetch blocks of that size (the nodes now
    refuse them and the client reads the origin), never a block of the new size at an
    index of the old one."""
    data = payload(8 * BS)
    s3.put_object(Bucket=bucket, Key="open.bin", Body=data)
    cluster = make_cluster(1)
    m = mount(cluster, f"s3://{bucket}")
    fd = os.open(m.path / "open.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == data[:4096]
        result = cachectl(
            "--etcd", cluster.etcd.url, "--cluster", cluster.name,
            "config", "set", "block_size", "1MiB",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        time.sleep(3)  # the mount's ring watcher takes the new setting from etcd
        for offset, length in [(5 * BS + 100, 65536), (7 * BS + 5, 4096), (2 * BS, BS)]:
            assert os.pread(fd, length, offset) == data[offset : offset + length], offset
    finally:
        os.close(fd)
