"""Prometheus metrics of the client side and of origin access.

The names are fixed by the design ("Prometheus metrics"); dashboards depend on them.
Origin counters live here because both cachenode (read-through) and clients (direct
fallback) read from origins through :mod:`clientlib.origin`.
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

from clientlib.errors import RingcacheError

__all__ = [
    "CLIENT_BLOCK_READS",
    "CLIENT_FALLBACKS",
    "ORIGIN_BYTES",
    "ORIGIN_REQUESTS",
    "serve_metrics",
]

ORIGIN_BYTES = Counter("ringcache_origin_bytes_total", "Bytes read from the origin")
ORIGIN_REQUESTS = Counter("ringcache_origin_requests_total", "Requests to the origin", ["op"])
CLIENT_BLOCK_READS = Counter(
    "ringcache_client_block_reads_total",
    "Blocks a client read, by where they came from",
    ["source"],
)
CLIENT_FALLBACKS = Counter(
    "ringcache_client_fallbacks_total",
    "Times a client passed over a block's owner, by reason",
    ["reason"],
)


def serve_metrics(listen: tuple[str, int]) -> None:
    """Serve this process's metrics on ``/metrics`` of ``listen`` (``--metrics-listen`` of
    mountd and s3gate, which have no HTTP server of their own for them), from a thread."""
    host, port = listen
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise RingcacheError(f"--metrics-listen {host}:{port}: {exc}") from None
