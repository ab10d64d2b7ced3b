"""Eviction policies: index behaviour, S3-FIFO's scan resistance, memory per entry."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from cachenode.eviction import LRUPolicy, S3FIFOPolicy, make_policy
from clientlib.errors import ConfigError

BLOCK = 4 << 20


def _fill(policy, capacity: int, key, nbytes: int = BLOCK) -> list:
    """Insert like the store does: evict until the new entry fits; return the victims."""
    victims = []
    while policy.nbytes + nbytes > capacity:
        victims.append(policy.pop_victim().key)
    policy.insert(key, nbytes)
    return victims


@pytest.mark.parametrize("name, cls", [("s3fifo", S3FIFOPolicy), ("lru", LRUPolicy)])
def test_make_policy_builds_the_named_policy_empty(name, cls):
    policy = make_policy(name)
    assert type(policy) is cls
    assert len(policy) == 0 and policy.nbytes == 0 and policy.pop_victim() is None


def test_make_policy_rejects_an_unknown_name():
    with pytest.raises(ConfigError, match="lfu"):
        make_policy("lfu")


@pytest.mark.parametrize("name", ["s3fifo", "lru"])
def test_policy_keeps_size_and_tag_of_each_entry(name):
    policy = make_policy(name)
    tag = (1 << 64) - 1
    policy.insert(7, 123, tag)
    assert 7 in policy
    assert policy.lookup(7) == (123, tag)
    assert policy.lookup(8) is None
    assert policy.nbytes == 123


@pytest.mark.parametrize("name", ["s3fifo", "lru"])
def test_pop_victim_hands_out_every_entry_once_and_keeps_byte_count(name):
    policy = make_policy(name)
    rng = random.Random(1)
    sizes = {k: rng.randrange(1, BLOCK) for k in range(500)}
    for key, size in sizes.items():
        policy.insert(key, size, key)
        if rng.random() < 0.3:
            policy.touch(key)
    assert policy.nbytes == sum(sizes.values())
    seen = {}
    for victim in policy.victims():
        assert victim.key not in seen
        assert (victim.nbytes, victim.tag) == (sizes[victim.key], victim.key)
        seen[victim.key] = victim.nbytes
    assert seen == sizes
    assert len(policy) == 0 and policy.nbytes == 0


@pytest.mark.parametrize("name", ["s3fifo", "lru"])
def test_removed_entry_is_never_a_victim_even_after_readmission(name):
    policy = make_policy(name)
    for key in range(10):
        policy.insert(key, 100)
    assert policy.remove(3) == (100, 0)
    assert policy.remove(3) is None
    policy.insert(3, 50)
    victims = [v.key for v in policy.victims()]
    assert sorted(victims) == list(range(10))
    assert policy.nbytes == 0


@pytest.mark.parametrize("name", ["s3fifo", "lru"])
def test_load_admits_entries_given_as_columns(name):
    policy = make_policy(name)
    policy.load([1, 2, 3], [10, 20, 30], [7, 8, (1 << 64) - 1])
    assert len(policy) == 3 and policy.nbytes == 60
    assert policy.lookup(3) == (30, (1 << 64) - 1)
    with pytest.raises(ValueError):
        policy.load([4], [1 << 32], [0])
    with pytest.raises(ValueError):
        policy.load([4, 5], [1], [0])


def test_s3fifo_loaded_entries_outlast_new_one_hit_wonders():
    """Blocks found on disk at a restart go to main; new arrivals must earn their place."""
    policy = S3FIFOPolicy()
    policy.load(list(range(90)), [BLOCK] * 90, [0] * 90)
    for key in range(100, 200):
        _fill(policy, 100 * BLOCK, key)
    assert all(key in policy for key in range(90))


def test_lru_touch_moves_entry_to_the_back():
    policy = LRUPolicy()
    for key in "abc":
        policy.insert(key, 1)
    policy.touch("a")
    assert [v.key for v in policy.victims()] == ["b", "c", "a"]


@pytest.mark.parametrize("name", ["s3fifo", "lru"])
def test_lookup_is_not_a_hit(name):
    """Lookups (``in``, serving checks) must not protect an entry the way a hit does."""
    survived = {}
    for how in ("lookup", "touch"):
        policy = make_policy(name)
        for key in range(10):
            _fill(policy, 10 * BLOCK, key)
        getattr(policy, how)(0)
        for key in range(10, 15):
            _fill(policy, 10 * BLOCK, key)
        survived[how] = 0 in policy
    assert survived == {"lookup": False, "touch": True}


def test_s3fifo_keeps_a_reaccessed_block_through_a_scan_where_lru_loses_it():
    capacity = 100 * BLOCK
    kept = {}
    for name in ("s3fifo", "lru"):
        policy = make_policy(name)
        for key in range(100):
            _fill(policy, capacity, ("warm", key))
        policy.touch(("warm", 0))
        # A backtest's sequential scan: 10x the cache of blocks read once.
        for key in range(1000):
            _fill(policy, capacity, ("scan", key))
        kept[name] = ("warm", 0) in policy
    assert kept == {"s3fifo": True, "lru": False}


def test_s3fifo_readmits_a_recently_evicted_block_to_main():
    policy = S3FIFOPolicy()
    capacity = 20 * BLOCK
    for key in range(20):
        _fill(policy, capacity, key)
    victims = _fill(policy, capacity, 20)
    assert victims == [0]  # oldest in small, never hit: evicted, ghost remembers it
    small_before = policy.small_bytes
    _fill(policy, capacity, 0)
    # 1 left small to make room; 0 went to main, not small.
    assert policy.small_bytes == small_before - BLOCK


def test_s3fifo_small_queue_stays_near_ten_percent_of_bytes():
    policy = S3FIFOPolicy()
    rng = random.Random(2)
    capacity = 1000 * BLOCK
    keys = list(range(5000))
    for _ in range(20000):
        key = rng.choice(keys[: rng.choice((50, 5000))])
        if not policy.touch(key):
            _fill(policy, capacity, key, rng.choice((BLOCK, BLOCK // 3)))
        assert policy.nbytes <= capacity
    assert policy.small_bytes <= 0.1 * capacity + BLOCK


def test_s3fifo_hits_do_not_change_victim_order_beyond_frequency():
    """A hit only sets the counter: among entries never hit, FIFO order holds."""
    policy = S3FIFOPolicy()
    for key in range(10):
        policy.insert(key, 1)
    policy.touch(4)
    order = [v.key for v in policy.victims()]
    assert order[:9] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert order[9] == 4


def _traced_bytes(build) -> tuple[int, object]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = build()
        return tracemalloc.get_traced_memory()[0] - before, result
    finally:
        tracemalloc.stop()


def test_s3fifo_index_costs_at_most_200_bytes_per_block_after_load_and_churn():
    """The index must stay within 200 B/block, keyed as the store keys it.

    Keys are 128-bit ints (block ids), tags 64-bit checksums. Churn (one insert and one
    eviction per put, a third of them hit) is what bloats dicts and fills the ghost. The
    keys are made before tracing starts (the store parses them from file names or
    requests), so they are added at their real size, 48 bytes each.
    """
    rng = random.Random(3)
    n = 100_000
    keys = [rng.getrandbits(128) for _ in range(n)]
    tags = [rng.getrandbits(64) for _ in range(n)]
    churn = [(rng.getrandbits(128), rng.getrandbits(64)) for _ in range(n)]
    per_block = {}

    def build_and_churn():
        policy = S3FIFOPolicy()
        policy.load(keys, [BLOCK] * n, tags)
        per_block["loaded"] = tracemalloc.get_traced_memory()[0] / n + 48
        for i, (key, tag) in enumerate(churn):
            while policy.nbytes + BLOCK > n * BLOCK:
                policy.pop_victim()
            policy.insert(key, BLOCK, tag)
            if i % 3 == 0:
                policy.touch(key)
        return policy

    churn_bytes, policy = _traced_bytes(build_and_churn)
    assert len(policy) == n
    per_block["churned"] = churn_bytes / n + 48
    assert max(per_block.values()) <= 200, per_block


def test_s3fifo_queues_do_not_grow_with_removals_alone():
    policy = S3FIFOPolicy()
    for key in range(1000):
        policy.insert(key, 1)

    def cycle():
        for key in range(1000, 51000):
            policy.insert(key, 1)
            policy.remove(key)

    grown, _ = _traced_bytes(cycle)
    assert len(policy) == 1000
    assert grown < 200_000  # 50k stale copies unbounded would be ~400 kB of deque
