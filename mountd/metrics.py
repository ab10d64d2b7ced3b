"""The mount's own Prometheus metrics (the client's live in ``clientlib.metrics``).

Registered on import, in the default registry that ``--metrics-listen`` serves.
"""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["LIMITED_BYTES", "LIMIT_WAIT"]

LIMITED_BYTES = Counter(
    "ringcache_mount_limited_bytes_total",
    "Bytes charged to a --download-limit or --upload-limit bucket",
    ["direction"],
)
LIMIT_WAIT = Counter(
    "ringcache_mount_limit_wait_seconds_total",
    "Time transfers waited for a --download-limit or --upload-limit bucket",
    ["direction"],
)
