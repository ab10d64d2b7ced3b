"""cachenode's Prometheus metrics (names fixed by the design; dashboards use them)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "BLOCK_HITS",
    "BLOCK_MISSES",
    "CACHE_BLOCKS",
    "CACHE_CAPACITY",
    "CACHE_USED",
    "EVICTIONS",
    "GET_HIT_SECONDS",
    "HANDOFFS",
    "HANDOFF_WINDOW",
    "HIT_BYTES",
    "REQUESTS_REFUSED",
    "REQUEST_BUCKETS",
    "REQUEST_SECONDS",
    "SERVED_BYTES",
    "SHIELD_WAIT",
    "TENANT_QUEUE_SECONDS",
    "TENANT_SERVED_BYTES",
    "BulkHistogram",
    "HistogramChild",
]


class HistogramChild:
    """One label set of a :class:`BulkHistogram`: ``observe`` one value, or ``add``
    counts tallied elsewhere by bucket."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def add(self, counts: Sequence[int], total: float) -> None:
        """Add ``counts[i]`` observations to bucket ``i`` (buckets past ``counts`` get
        none), summing to ``total``, as that many :meth:`observe` calls would."""
        with self._lock:
            for index, n in enumerate(counts[: len(self._counts)]):
                self._counts[index] += n
            self._sum += total

    def sample(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` pairs and the sum, as the exposition format has them."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        buckets, running = [], 0
        for bound, n in zip([*self._bounds, float("inf")], counts, strict=True):
            running += n
            buckets.append((floatToGoString(bound), float(running)))
        return buckets, total


class BulkHistogram(Collector):
    """A labelled Prometheus histogram whose children also take observations in bulk.

    For the hit fast path (:mod:`cachenode.hittally`), which tallies its latencies by
    bucket and adds them at once: a ``prometheus_client`` ``observe`` per hit takes locks
    that are a measurable share of a small hit, and that library has no bulk call. This
    is a custom collector (its public extension point); the exported samples are those
    of a ``Histogram`` without the ``_created`` series.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The child of one label set (created at its first use)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, HistogramChild(self._bounds))
        return child

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in list(self._children.items()):
            buckets, total = child.sample()
            family.add_metric(list(key), buckets, total)
        yield family


BLOCK_HITS = Counter("ringcache_block_hits_total", "Block requests served from the store")
BLOCK_MISSES = Counter("ringcache_block_misses_total", "Block requests that went to the origin")
SERVED_BYTES = Counter("ringcache_served_bytes_total", "Bytes sent to clients", ["result"])
CACHE_USED = Gauge("ringcache_cache_used_bytes", "Bytes of blocks in the store")
CACHE_CAPACITY = Gauge("ringcache_cache_capacity_bytes", "Byte capacity of the store")
EVICTIONS = Counter("ringcache_evictions_total", "Blocks evicted")
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUEST_SECONDS = BulkHistogram(
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
HANDOFF_WINDOW = Gauge(
    "ringcache_handoff_window_seconds",
    "Seconds left in which misses ask previous owners (after a join or a ring change)",
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
TENANT_QUEUE_SECONDS = BulkHistogram(
    "ringcache_tenant_queue_seconds",
    "Time block requests waited for a serving slot, by tenant (fair share)",
    ["tenant"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
