"""cachenode's Prometheus metrics (names fixed by the design; dashboards use them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BLOCK_HITS",
    "BLOCK_MISSES",
    "CACHE_CAPACITY",
    "CACHE_USED",
    "EVICTIONS",
    "HANDOFFS",
    "REQUESTS_REFUSED",
    "REQUEST_SECONDS",
    "SERVED_BYTES",
]

BLOCK_HITS = Counter("ringcache_block_hits_total", "Block requests served from the store")
BLOCK_MISSES = Counter("ringcache_block_misses_total", "Block requests that went to the origin")
SERVED_BYTES = Counter("ringcache_served_bytes_total", "Bytes sent to clients", ["result"])
CACHE_USED = Gauge("ringcache_cache_used_bytes", "Bytes of blocks in the store")
CACHE_CAPACITY = Gauge("ringcache_cache_capacity_bytes", "Byte capacity of the store")
EVICTIONS = Counter("ringcache_evictions_total", "Blocks evicted")
REQUEST_SECONDS = Histogram(
    "ringcache_request_seconds",
    "Request latency",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUESTS_REFUSED = Counter(
    "ringcache_requests_refused_total", "Requests refused, by reason", ["reason"]
)
HANDOFFS = Counter(
    "ringcache_handoffs_total",
    "Misses looked up on the block's previous or primary owner before the origin",
    ["result"],
)
