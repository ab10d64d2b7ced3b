"""The hit fast path's counts, kept in plain ints and added to Prometheus in bulk.

Each Prometheus ``inc`` or ``observe`` takes a lock; several of them per small hit are a
measurable share of its cost. So :class:`HitTally` tallies hits, bytes and latencies by
tenant and bucket, and :meth:`HitTally.report` adds them up when someone reads the
metrics (:attr:`NodeContext.before_report`) and every second.
"""

from __future__ import annotations

import bisect

from cachenode.metrics import (
    BLOCK_HITS,
    GET_HIT_SECONDS,
    HIT_BYTES,
    REQUEST_BUCKETS,
    TENANT_QUEUE_SECONDS,
    TENANT_SERVED_BYTES,
)

__all__ = ["HitTally"]


class HitTally:
    """Fast hits not yet in the node's Prometheus metrics."""

    def __init__(self) -> None:
        #: tenant -> [hits, bytes]
        self._tenants: dict[str, list[int]] = {}
        self._latency = [0] * (len(REQUEST_BUCKETS) + 1)  # the last one is +Inf
        self._latency_sum = 0.0

    def hit(self, tenant: str, nbytes: int, seconds: float) -> None:
        """Count one hit of ``nbytes`` for ``tenant``, answered in ``seconds``."""
        counts = self._tenants.get(tenant)
        if counts is None:
            counts = self._tenants[tenant] = [0, 0]
        counts[0] += 1
        counts[1] += nbytes
        self._latency[bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def report(self) -> None:
        """Add the hits tallied so far to Prometheus, and start over."""
        tenants, self._tenants = self._tenants, {}
        latency, self._latency = self._latency, [0] * len(self._latency)
        latency_sum, self._latency_sum = self._latency_sum, 0.0
        if not tenants:
            return
        GET_HIT_SECONDS.add(latency, latency_sum)
        for tenant, (hits, nbytes) in tenants.items():
            BLOCK_HITS.inc(hits)
            HIT_BYTES.inc(nbytes)
            TENANT_SERVED_BYTES.labels(tenant).inc(nbytes)
            # Fast hits never wait for a serving slot (FairScheduler.try_acquire).
            TENANT_QUEUE_SECONDS.labels(tenant).add([hits], 0.0)
