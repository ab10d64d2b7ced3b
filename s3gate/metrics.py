"""The gateway's Prometheus metrics (names fixed by docs/metrics.md; dashboards use them).

Served with the client library's own (``ringcache_client_*``, ``ringcache_origin_*``) on
``--metrics-listen``: the block reads show where a GET's bytes came from.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["GATEWAY_BYTES", "GATEWAY_REQUESTS", "GATEWAY_SECONDS"]

GATEWAY_REQUESTS = Counter(
    "ringcache_gateway_requests_total",
    "S3 requests the gateway answered, by S3 operation and HTTP status",
    ["op", "code"],
)
GATEWAY_BYTES = Counter(
    "ringcache_gateway_bytes_total",
    "Object bytes through the gateway: out (GET bodies) and in (PUT and part bodies)",
    ["direction"],
)
GATEWAY_SECONDS = Histogram(
    "ringcache_gateway_request_seconds",
    "Time from a request's arrival to its last byte sent, by S3 operation",
    ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
