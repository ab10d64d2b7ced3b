"""The local disk tier a mount has by default (``--local-cache auto``), for real: a
private directory per mount identity, never two running mounts in one, none with
``off``, and what it serves is the origin's bytes."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from clientlib.blockfile import parse_name
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import wait_until
from mountd.cachedir import claim
from mountd.localtier import LocalTier
from tests.conftest import make_token
from tests.mountd.conftest import read_twice

SIZE = 2 * BS + 4321


def tiers(root: Path) -> dict[str, int]:
    """The mount directories under ``root``, with the block files each holds."""
    if not root.exists():
        return {}
    return {
        d.name: sum(1 for p in d.glob("*/*") if not p.name.endswith(".tmp"))
        for d in root.iterdir()
        if d.is_dir()
    }


def test_a_mount_keeps_blocks_in_a_private_directory_of_its_own_by_default(
    make_cluster, mount, s3, bucket, tmp_path
):
    data = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key="a.bin", Body=data)
    cluster = make_cluster(1)
    root = tmp_path / "local"
    first = mount(cluster, f"s3://{bucket}", "--local-cache-root", str(root))
    assert read_twice(first.path / "a.bin") == data
    (ident,) = tiers(root)
    assert stat.S_IMODE((root / ident).stat().st_mode) == 0o700
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    wait_until(lambda: tiers(root) == {ident: 3}, 10, "3 blocks in the tier")  # written behind
    # A second mount of the same source while the first runs: a directory of its own.
    second = mount(cluster, f"s3://{bucket}", "--local-cache-root", str(root))
    assert read_twice(second.path / "a.bin") == data
    wait_until(lambda: tiers(root) == {ident: 3, f"{ident}.2": 3}, 10, "a second tier")
    first.unmount()
    second.unmount()
    # With the nodes gone, a new mount of it reads the blocks the first one kept,
    # checked: the origin's bytes, and no block from the node or the origin.
    cluster.stop()
    third = mount(cluster, f"s3://{bucket}", "--local-cache-root", str(root))
    with open(third.path / "a.bin", "rb") as fh:
        for offset in (BS + 7, SIZE - 65536, 0):
            assert os.pread(fh.fileno(), 65536, offset) == data[offset : offset + 65536]
    assert (third.path / "a.bin").read_bytes() == data
    # Never inside a FUSE file system (a network one, or this very mount).
    assert claim(third.path / "cache", "abc") is None
    assert third.metric("ringcache_client_block_reads_total", 'source="peer"') == 0
    assert third.metric("ringcache_client_block_reads_total", 'source="origin"') == 0


def test_blocks_a_stream_read_are_stored_past_the_page_cache_from_the_second_stream_on(
    make_cluster, mount, s3, bucket, tmp_path
):
    """A file read from start to end stores nothing the first time (most files are read
    once, and the page cache keeps them a while); read through again by the next mount
    of the tier, its whole blocks go to the tier with O_DIRECT (the kernel keeps the
    reader's pages in the mount's page cache; a second copy there only cost CPU), so
    none of their parts is in the page cache afterwards; they are served, checked."""
    data = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key="a.bin", Body=data)
    cluster = make_cluster(1)
    root = tmp_path / "local"
    first = mount(cluster, f"s3://{bucket}", "--local-cache-root", str(root))
    assert (first.path / "a.bin").read_bytes() == data
    first.unmount()  # after the tier's writes, had there been any
    (ident,) = tiers(root)
    assert tiers(root) == {ident: 0}
    second = mount(cluster, f"s3://{bucket}", "--local-cache-root", str(root))
    assert (second.path / "a.bin").read_bytes() == data
    wait_until(lambda: tiers(root) == {ident: 3}, 10, "3 blocks in the tier")
    second.unmount()
    tier = LocalTier(root / ident, 4 * BS)
    tier.open()
    whole = [
        parsed[0]
        for path in (root / ident).glob("*/*")
        if (parsed := parse_name(os.fsencode(path.name))) and parsed[1] == BS
    ]
    assert len(whole) == 2
    for block_id in whole:
        assert tier.get_part_cached(block_id, 0, 4096) is None  # not in the page cache
        assert tier.get(block_id) is not None  # whole and checked
    tier.close()


def test_off_keeps_nothing_on_disk(make_cluster, mount, s3, bucket, tmp_path):
    data = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key="a.bin", Body=data)
    root = tmp_path / "local"
    m = mount(
        make_cluster(1), f"s3://{bucket}", "--local-cache-root", str(root), "--local-cache", "off"
    )
    assert (m.path / "a.bin").read_bytes() == data
    assert tiers(root) == {}


def test_a_mount_with_another_token_never_reads_what_another_token_kept(
    make_cluster, mount, s3, bucket, secret, tmp_path
):
    cluster = make_cluster(1, extra=["--token-file", str(secret)])
    data = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key="in/a.bin", Body=data)
    wide = asyncio.run(make_token(cluster, secret, f"s3://{bucket}/"))
    narrow = asyncio.run(make_token(cluster, secret, f"s3://{bucket}/in"))
    root = tmp_path / "local"
    flags = ("--local-cache-root", str(root))
    m = mount(cluster, f"s3://{bucket}", "--token-file", str(wide), *flags)
    assert read_twice(m.path / "in" / "a.bin") == data
    m.unmount()
    (kept,) = tiers(root)
    assert tiers(root)[kept] == 3
    other = mount(cluster, f"s3://{bucket}", "--token-file", str(narrow), *flags)
    assert (other.path / "in" / "a.bin").read_bytes() == data
    # Its own directory, and every block from the node, none from the other's.
    assert kept in tiers(root) and len(tiers(root)) == 2
    assert other.metric("ringcache_client_block_reads_total", 'source="peer"') == 3
