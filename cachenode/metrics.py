"""cachenode's Prometheus metrics (names fixed by the design; dashboards use them)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BLOCK_HITS",
    "BLOCK_MISSES",
    "CACHE_BLOCKS",
    "CACHE_CAPACITY",
    "CACHE_USED",
    "EVICTIONS",
    "GET_HIT_SECONDS",
    "HANDOFFS",
    "HIT_BYTES",
    "REQUESTS_REFUSED",
    "REQUEST_BUCKETS",
    "REQUEST_SECONDS",
    "SERVED_BYTES",
    "SHIELD_WAIT",
    "TENANT_QUEUE_SECONDS",
    "TENANT_SERVED_BYTES",
    "add_observations",
]

BLOCK_HITS = Counter("ringcache_block_hits_total", "Block requests served from the store")
BLOCK_MISSES = Counter("ringcache_block_misses_total", "Block requests that went to the origin")
SERVED_BYTES = Counter("ringcache_served_bytes_total", "Bytes sent to clients", ["result"])
CACHE_USED = Gauge("ringcache_cache_used_bytes", "Bytes of blocks in the store")
CACHE_CAPACITY = Gauge("ringcache_cache_capacity_bytes", "Byte capacity of the store")
EVICTIONS = Counter("ringcache_evictions_total", "Blocks evicted")
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUEST_SECONDS = Histogram(
    "ringcache_request_seconds", "Request latency", ["op"], buckets=REQUEST_BUCKETS
)
# Label children of the hit path, created once: ``.labels()`` on every request costs a
# lock and a dict lookup, a measurable share of a 64 KiB hit.
HIT_BYTES = SERVED_BYTES.labels("hit")
GET_HIT_SECONDS = REQUEST_SECONDS.labels("get_hit")
REQUESTS_REFUSED = Counter(
    "ringcache_requests_refused_total", "Requests refused, by reason", ["reason"]
)
HANDOFFS = Counter(
    "ringcache_handoffs_total",
    "Misses looked up on the block's previous or primary owner before the origin",
    ["result"],
)
SHIELD_WAIT = Histogram(
    "ringcache_origin_shield_wait_seconds",
    "Time a miss waited for the origin shield (rate and in-flight limits)",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CACHE_BLOCKS = Gauge("ringcache_cache_blocks", "Blocks in the store")

# Every label value exists from start-up, so the first increase after a (re)start is
# visible to rate() instead of starting a new series mid-way.
for _result in ("hit", "miss"):
    SERVED_BYTES.labels(_result)
    HANDOFFS.labels(_result)
for _op in ("get_hit", "get_miss", "put"):
    REQUEST_SECONDS.labels(_op)
TENANT_SERVED_BYTES = Counter(
    "ringcache_tenant_served_bytes_total", "Block bytes served, by tenant", ["tenant"]
)
TENANT_QUEUE_SECONDS = Histogram(
    "ringcache_tenant_queue_seconds",
    "Time block requests waited for a serving slot, by tenant (fair share)",
    ["tenant"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def add_observations(child: Histogram, counts: Sequence[int], total: float) -> None:
    """Add ``counts[i]`` observations to bucket ``i`` of a histogram child (buckets past
    ``counts`` get none), summing to ``total``, as that many ``observe`` calls would.

    For the hit fast path (cachenode.fasthits), which tallies its latencies by bucket and
    adds them in bulk: ``observe`` takes two locks, a measurable share of a 64 KiB hit.
    prometheus_client has no public bulk call, so this uses the child's bucket values
    (prometheus-client is pinned; tests/cachenode/test_fasthits.py reads the result back).
    """
    for value, n in zip(child._buckets, counts, strict=False):
        if n:
            value.inc(n)
    child._sum.inc(total)
