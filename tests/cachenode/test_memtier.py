"""The memory tier (cachenode.memtier): a large block's copy is exactly its bytes, held in
memory: a nameless file whose pages are locked, or, where that cannot be made, a sealed
memfd that no process can change."""

from __future__ import annotations

import fcntl
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cachenode.memtier import MemoryTier, shmem_huge_pages
from clientlib.blockfile import BlockFile, block_checksum

MiB = 1024 * 1024


def _locked_bytes() -> int:
    """This process's memory locked by ``mlock`` (``VmLck``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/self/status")


def test_a_large_blocks_copy_is_a_nameless_file_whose_pages_stay_in_memory(tmp_path) -> None:
    """The copy is an ``O_TMPFILE`` in the given dir's file system that can never get a
    name, so only the node's own fd reaches it, and every page of it is locked in memory
    (never dropped from the page cache, so never read back from the disk) until it leaves
    the tier. A tier of 6 MiB needs no more than a default ``RLIMIT_MEMLOCK`` (8 MiB)."""
    tier = MemoryTier(6 * MiB, recheck_after=60)
    assert tier.pins
    data = os.urandom(4 * MiB + 12_345)
    locked = _locked_bytes()
    tier.keep_copy("ab" * 16, 7, memoryview(bytearray(data)), str(tmp_path))
    assert tier.pins
    assert _locked_bytes() - locked >= len(data)
    copy = tier.open("ab" * 16, 7)
    assert copy is not None and copy.nbytes == len(data)
    try:
        assert os.pread(copy.fd, len(data) + 1, 0) == data
        assert os.readlink(f"/proc/self/fd/{copy.fd}").endswith("(deleted)")
        assert not list(tmp_path.iterdir())
        proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
        try:  # linkat(AT_SYMLINK_FOLLOW), which links a file opened O_TMPFILE without O_EXCL
            with pytest.raises(FileNotFoundError):
                os.link(f"self/fd/{copy.fd}", tmp_path / "named", src_dir_fd=proc)
        finally:
            os.close(proc)
    finally:
        copy.close()
    assert tier.open("ab" * 16, 8) is None  # another version of the block: dropped
    assert _locked_bytes() == locked
    tier.close()


async def test_a_pinned_copy_is_made_in_the_pool_and_kept_if_it_matches(tmp_path, caplog) -> None:
    """With a pool, the copy (a write to a disk's file system, which can block) is made
    there, from the checked file or from a copy of the bytes (the caller reuses its
    buffer), and kept once made if its own bytes match the checksum; the block is not
    admitted again meanwhile, and a copy still being made when the tier closes is closed
    too."""
    tier = MemoryTier(6 * MiB, recheck_after=60)
    data = os.urandom(2 * MiB)
    checksum = block_checksum(data)
    (tmp_path / "block").write_bytes(data)
    fds, locked = set(os.listdir("/proc/self/fd")), _locked_bytes()
    with ThreadPoolExecutor(1) as pool:
        buf = bytearray(data)
        made = tier.keep_copy("ab" * 16, checksum, memoryview(buf), str(tmp_path), pool)
        assert made is not None and tier.making("ab" * 16) is made
        buf[:] = bytes(len(buf))  # the caller's buffer, reused
        assert not tier.admits("ab" * 16, len(data))
        await made
        assert tier.making("ab" * 16) is None
        copy = tier.open("ab" * 16, checksum)
        assert copy is not None
        try:
            assert os.pread(copy.fd, len(data) + 1, 0) == data
            assert os.readlink(f"/proc/self/fd/{copy.fd}").startswith(f"{tmp_path}/#")
        finally:
            copy.close()

        file = BlockFile(os.open(tmp_path / "block", os.O_RDONLY), len(data))
        with caplog.at_level(logging.WARNING, logger="cachenode.memtier"):
            made = tier.keep_copy("cd" * 16, checksum + 1, data, str(tmp_path), pool, file)
            assert made is not None
            await made
        assert tier.open("cd" * 16, checksum + 1) is None  # its bytes do not match
        assert "do not match" in caplog.text and tier.pins
        made = tier.keep_copy("cd" * 16, checksum, data, str(tmp_path), pool, file)
        file.close()  # the caller's: the pool reads a duplicate
        assert made is not None
        await made
        copy = tier.open("cd" * 16, checksum)
        assert copy is not None and os.pread(copy.fd, len(data) + 1, 0) == data
        copy.close()

        assert tier.keep_copy("ef" * 16, checksum, data, str(tmp_path), pool)
    tier.close()  # "ef"'s copy, made but not yet kept, is closed with the rest
    assert set(os.listdir("/proc/self/fd")) == fds and _locked_bytes() == locked


def test_where_no_copy_can_be_pinned_a_sealed_memfd_is_made_and_that_is_said_once(
    caplog,
) -> None:
    """A file system without ``O_TMPFILE`` (``/proc`` here; the same goes for no room to
    lock the pages): the copy is a sealed memfd, from then on, and the log says so once."""
    tier = MemoryTier(64 * MiB, recheck_after=60)
    data = os.urandom(4 * MiB + 12_345)  # two huge pages and a tail in small ones
    with caplog.at_level(logging.WARNING, logger="cachenode.memtier"):
        tier.keep_copy("ab" * 16, 7, memoryview(bytearray(data)), "/proc")
        tier.keep_copy("cd" * 16, 7, memoryview(bytearray(data)), "/proc")
    assert not tier.pins
    assert [r.getMessage().count("cannot be pinned") for r in caplog.records] == [1]
    copy = tier.open("ab" * 16, 7)
    assert copy is not None and copy.nbytes == len(data)
    try:
        assert os.pread(copy.fd, len(data) + 1, 0) == data
        seals = fcntl.fcntl(copy.fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SEAL):
            assert seals & seal, seal
        with pytest.raises(PermissionError):
            os.pwrite(copy.fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(copy.fd, 1)
    finally:
        copy.close()
    assert tier.open("ab" * 16, 8) is None  # another version of the block
    tier.close()


@pytest.mark.parametrize("where", ["pinned", "/proc"])
def test_a_large_blocks_copy_due_for_a_check_is_kept_while_it_still_matches(
    monkeypatch, tmp_path, where: str
) -> None:
    """Past ``recheck_after`` the copy is not served: the store reads the file and checks
    it, and the tier (which admits the block at once) keeps the same copy if its own
    bytes still match the checksum, so a pinned copy's pages are not written to the disk
    again; a copy whose bytes changed is replaced by a new one of the checked bytes."""
    clock = [1000.0]
    monkeypatch.setattr("cachenode.memtier.time.monotonic", lambda: clock[0])
    tier = MemoryTier(6 * MiB, recheck_after=60)
    pinned = where == "pinned"
    where = str(tmp_path) if pinned else where
    data = os.urandom(4 * MiB)
    checksum = block_checksum(data)
    bid = "ab" * 16

    def inode() -> int:
        copy = tier.open(bid, checksum)
        assert copy is not None
        try:
            assert os.pread(copy.fd, len(data) + 1, 0) == data
            return os.fstat(copy.fd).st_ino
        finally:
            copy.close()

    tier.keep_copy(bid, checksum, memoryview(bytearray(data)), where)
    first = inode()
    held = tier.open(bid, checksum)  # so that no new copy gets the first one's inode
    assert held is not None
    clock[0] += 61
    assert tier.open(bid, checksum) is None  # due: the file is read and checked
    assert tier.admits(bid, len(data))
    tier.keep_copy(bid, checksum, memoryview(bytearray(data)), where)
    assert inode() == first  # the same copy, checked again
    if pinned:  # the node's own user (or root) can reach it through /proc
        os.chmod(f"/proc/self/fd/{held.fd}", 0o600)
        fd = os.open(f"/proc/self/fd/{held.fd}", os.O_WRONLY)
        os.pwrite(fd, b"\0" * 4096, 0)
        os.close(fd)
    clock[0] += 61
    assert tier.open(bid, checksum) is None
    tier.keep_copy(bid, checksum, memoryview(bytearray(data)), where)
    assert (inode() == first) is not pinned  # a changed copy is made anew
    held.close()
    tier.close()


def test_the_kernels_huge_page_setting_for_shared_memory_is_read() -> None:
    assert shmem_huge_pages() in {"always", "within_size", "advise", "never", "deny", "force"}


def test_a_small_blocks_bytes_are_served_until_their_recheck_is_due(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clock = [1000.0]
    monkeypatch.setattr("cachenode.memtier.time.monotonic", lambda: clock[0])
    tier = MemoryTier(MiB, recheck_after=60)
    data = os.urandom(65_536)
    assert tier.keep("cd" * 16, 9, bytearray(data)) == data
    assert tier.get("cd" * 16, 9) == data
    assert tier.get("cd" * 16, 10) is None  # the index holds another version: dropped
    assert tier.get("cd" * 16, 9) is None
    tier.keep("cd" * 16, 9, bytearray(data))
    clock[0] += 61  # due for a check against its file: the store reads it again
    assert tier.get("cd" * 16, 9) is None


def test_a_large_block_is_admitted_at_its_second_hit() -> None:
    """A stream through a file larger than the tier hits each block once: copying each
    would cost more than sending it. The second hit of a block remembered is admitted."""
    tier = MemoryTier(64 * MiB, recheck_after=60)
    assert not tier.admits("ab" * 16, 4 * MiB)  # remembered
    assert not tier.admits("cd" * 16, 4 * MiB)
    assert tier.admits("ab" * 16, 4 * MiB)
    assert not tier.admits("ab" * 16, 4 * MiB)  # forgotten once admitted: copied now
    assert not tier.admits("ef" * 16, 64 * MiB) and not tier.admits("ef" * 16, 64 * MiB)
    for n in range(64 // 4):  # the tier's size in other first hits: "cd" is forgotten
        tier.admits(f"{n:032x}", 4 * MiB)
    assert not tier.admits("cd" * 16, 4 * MiB)
    tier.close()


def test_a_file_read_again_and_again_is_admitted_only_if_the_tier_can_hold_it() -> None:
    """Every job of a backtest streams the same file. One of 12 blocks of 4 MiB fits a
    64 MiB tier: its second pass is admitted. One of 24 does not: a block would leave
    the tier before the next pass hit it, so its copy would be made on every pass and
    never served; no pass is admitted."""
    tier = MemoryTier(64 * MiB, recheck_after=60)
    small = [f"{n:032x}" for n in range(12)]
    assert [sum(tier.admits(b, 4 * MiB) for b in small) for _ in range(2)] == [0, 12]
    large = [f"{n:032x}" for n in range(100, 124)]
    assert [sum(tier.admits(b, 4 * MiB) for b in large) for _ in range(4)] == [0, 0, 0, 0]
    tier.close()


def test_the_least_recently_used_blocks_leave_first_and_their_copies_are_closed(
    tmp_path,
) -> None:
    """By bytes, oldest use first; at ``max_copies`` copies of large blocks, the oldest entries
    leave until one is free; every copy that leaves (or remains at close) is closed."""
    tier = MemoryTier(3 * 65_536 + 1, recheck_after=60, max_copies=1)
    small = {c * 32: os.urandom(65_536) for c in "abc"}
    for n, (bid, data) in enumerate(small.items()):
        tier.keep(bid, n, bytearray(data))
    assert tier.get("a" * 32, 0) == small["a" * 32]  # now the most recently used
    tier.keep("d" * 32, 3, bytearray(65_536))  # no room: "b", the least recently used, left
    assert tier.get("b" * 32, 1) is None
    assert tier.get("a" * 32, 0) == small["a" * 32] and tier.get("c" * 32, 2) is not None

    big = MemoryTier(6 * MiB, recheck_after=60, max_copies=1)
    locked = _locked_bytes()
    big.keep("e" * 32, 4, bytearray(65_536))
    big.keep_copy("f" * 32, 5, memoryview(bytearray(2 * MiB)), str(tmp_path))
    first = big.open("f" * 32, 5)
    assert first is not None
    first.close()
    fds = set(os.listdir("/proc/self/fd"))
    big.keep_copy("0" * 32, 6, memoryview(bytearray(2 * MiB)), str(tmp_path))  # 1 copy at most
    assert big.open("f" * 32, 5) is None and big.get("e" * 32, 4) is None  # older: gone
    kept = big.open("0" * 32, 6)
    assert kept is not None
    kept.close()
    assert set(os.listdir("/proc/self/fd")) == fds  # "f"'s copy closed, "0"'s opened
    assert big.pins and _locked_bytes() - locked == 2 * MiB  # and "f"'s unmapped
    big.close()
    assert len(set(os.listdir("/proc/self/fd"))) == len(fds) - 1
    assert _locked_bytes() == locked
    tier.close()
