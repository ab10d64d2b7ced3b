"""The memory tier (cachenode.memtier): a large block's copy is exactly its bytes and no
process can change it, whatever pages the kernel gave it."""

from __future__ import annotations

import fcntl
import os

import pytest

from cachenode import memtier
from cachenode.memtier import MemoryTier, shmem_huge_pages

MiB = 1024 * 1024


def test_a_large_blocks_copy_is_its_bytes_sealed_against_any_change() -> None:
    tier = MemoryTier(64 * MiB, recheck_after=60)
    data = os.urandom(4 * MiB + 12_345)  # two huge pages and a tail in small ones
    tier.keep_copy("ab" * 16, 7, memoryview(bytearray(data)))
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
    for n in range(memtier.SEEN_BLOCKS):  # "cd" is pushed out of what is remembered
        tier.admits(f"{n:032x}", 4 * MiB)
    assert not tier.admits("cd" * 16, 4 * MiB)
    tier.close()


def test_the_least_recently_used_blocks_leave_first_and_their_copies_are_closed() -> None:
    """By bytes, oldest use first; at ``max_copies`` sealed copies, the oldest entries
    leave until one is free; every copy that leaves (or remains at close) is closed."""
    tier = MemoryTier(3 * 65_536 + 1, recheck_after=60, max_copies=1)
    small = {c * 32: os.urandom(65_536) for c in "abc"}
    for n, (bid, data) in enumerate(small.items()):
        tier.keep(bid, n, bytearray(data))
    assert tier.get("a" * 32, 0) == small["a" * 32]  # now the most recently used
    tier.keep("d" * 32, 3, bytearray(65_536))  # no room: "b", the least recently used, left
    assert tier.get("b" * 32, 1) is None
    assert tier.get("a" * 32, 0) == small["a" * 32] and tier.get("c" * 32, 2) is not None

    big = MemoryTier(64 * MiB, recheck_after=60, max_copies=1)
    big.keep("e" * 32, 4, bytearray(65_536))
    big.keep_copy("f" * 32, 5, memoryview(bytearray(2 * MiB)))
    first = big.open("f" * 32, 5)
    assert first is not None
    first.close()
    memfds = set(os.listdir("/proc/self/fd"))
    big.keep_copy("0" * 32, 6, memoryview(bytearray(2 * MiB)))  # one copy at most
    assert big.open("f" * 32, 5) is None and big.get("e" * 32, 4) is None  # older: gone
    kept = big.open("0" * 32, 6)
    assert kept is not None
    kept.close()
    assert set(os.listdir("/proc/self/fd")) == memfds  # "f"'s memfd closed, "0"'s opened
    big.close()
    assert len(set(os.listdir("/proc/self/fd"))) == len(memfds) - 1
    tier.close()
