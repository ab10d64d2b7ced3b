"""Warming a prefix before a burst: each block fetched from the origin once per cluster.

Warmup lists the objects under the sources, computes their blocks for the cluster's block
size, asks each block's owner which blocks it already has, and sends the owner the rest
to fetch (``POST /v1/blocks/warm``): the node reads them through and stores them without
sending them back. Per-node warmups would download everything once per node; this
downloads it once. A second warmup finds everything cached and fetches nothing.

Sources are ``s3://`` / ``file://`` URLs or paths inside a ringcache mount, which mountd
tags with the xattr ``user.ringcache.source``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from clientlib.blocks import BlockRef, block_refs
from clientlib.client import CacheClient
from clientlib.cluster import NodeInfo
from clientlib.errors import BadRequest, NotFound, RingcacheError
from clientlib.origin import ObjectInfo
from clientlib.urls import split_url

__all__ = [
    "SOURCE_XATTR",
    "CheckReport",
    "WarmupReport",
    "check",
    "evict",
    "plan",
    "resolve_source",
    "warmup",
]

log = logging.getLogger(__name__)

SOURCE_XATTR = "user.ringcache.source"
#: Blocks per presence query or eviction: a query names each block with its source
#: (up to 2 KiB), and a body must stay under the node's 4 MiB limit.
QUERY_BATCH = 1000
#: Blocks per warm request. ``threads`` counts blocks in flight, as a copy tool's threads
#: count requests, and a batch answers when its slowest block is stored: small batches
#: keep every slot busy.
WARM_BATCH = 2

Progress = Callable[[int, int], None]
"""Called with (blocks done, bytes fetched) increments as warmup advances."""


@dataclass
class WarmupReport:
    """What ``cachectl warmup --json`` prints (fields fixed by the design)."""

    blocks_total: int = 0
    blocks_already_cached: int = 0
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, int | float]:
        doc = asdict(self)
        del doc["error_messages"]
        doc["seconds"] = round(self.seconds, 3)
        return doc


@dataclass
class CheckReport:
    """What ``cachectl warmup --check`` reports: how much of the sources is cached."""

    blocks_total: int = 0
    blocks_cached: int = 0
    by_dir: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def ratio(self) -> float:
        return round(self.blocks_cached / self.blocks_total, 4) if self.blocks_total else 1.0

    def to_json(self) -> dict[str, int | float]:
        return {
            "blocks_total": self.blocks_total,
            "blocks_cached": self.blocks_cached,
            "ratio": self.ratio,
        }


def resolve_source(source: str) -> str:
    """A URL as is, or the source URL of a path inside a ringcache mount."""
    if source.startswith(("s3://", "file://")):
        split_url(source)
        return source
    if "://" in source:
        raise BadRequest(f"unsupported URL {source!r}: use s3://, file:// or a mounted path")
    try:
        return os.getxattr(source, SOURCE_XATTR).decode()
    except FileNotFoundError:
        raise NotFound(f"{source}: no such file or directory") from None
    except OSError:
        raise BadRequest(
            f"{source} is not inside a ringcache mount (no {SOURCE_XATTR} attribute); "
            "give an s3:// or file:// URL"
        ) from None


async def list_sources(client: CacheClient, sources: Iterable[str]) -> list[ObjectInfo]:
    """Every object under the sources (each must name at least one object)."""
    objects: dict[str, ObjectInfo] = {}
    for source in sources:
        url = resolve_source(source)
        found = await client.origin(url).list(url)
        if not found:
            raise NotFound(f"nothing to warm under {url}")
        for info in found:
            objects[info.url] = info
    return list(objects.values())


def plan(client: CacheClient, objects: Iterable[ObjectInfo]) -> list[BlockRef]:
    """All blocks of the objects, in object order, for the cluster's block size."""
    refs: list[BlockRef] = []
    for info in objects:
        refs.extend(
            block_refs(info.url, info.origin, info.key, info.version, info.size, client.block_size)
        )
    return refs


def _by_owner(client: CacheClient, refs: list[BlockRef]) -> dict[str, list[BlockRef]]:
    groups: dict[str, list[BlockRef]] = defaultdict(list)
    for ref in refs:
        owners = client.ring.owners(ref.id, 1)
        if owners:
            groups[owners[0].id].append(ref)
    return groups


async def _present(client: CacheClient, node: NodeInfo, refs: list[BlockRef]) -> list[bool]:
    present: list[bool] = []
    for start in range(0, len(refs), QUERY_BATCH):
        batch = refs[start : start + QUERY_BATCH]
        # Each block with its source: a scoped token may only ask about its own blocks.
        doc = {"blocks": [{"id": r.id, **r.fields()} for r in batch]}
        answer = await client.node_call(node, "/v1/blocks/query", doc)
        present.extend(bool(p) for p in answer["present"])
    return present


async def warmup(
    client: CacheClient,
    sources: Iterable[str],
    threads: int = 16,
    progress: Progress | None = None,
    on_total: Callable[[int, int], None] | None = None,
) -> WarmupReport:
    """Make every block under ``sources`` cached on its owner; see the module docstring.

    ``on_total(blocks, bytes)`` is called once the plan is known (for a progress bar).
    """
    started = time.monotonic()
    report = WarmupReport()
    refs = plan(client, await list_sources(client, sources))
    report.blocks_total = len(refs)
    if on_total:
        on_total(len(refs), sum(r.length for r in refs))
    if not len(client.ring):
        raise RingcacheError("no active cache nodes in the cluster: nothing to warm")
    groups = _by_owner(client, refs)
    slots = asyncio.Semaphore(max(1, threads // WARM_BATCH))

    async def warm_batch(node: NodeInfo, batch: list[BlockRef]) -> None:
        async with slots:
            try:
                answer = await client.node_call(
                    node, "/v1/blocks/warm", {"blocks": [{"id": r.id, **r.fields()} for r in batch]}
                )
            except RingcacheError as exc:
                report.errors += len(batch)
                report.error_messages.append(str(exc))
                log.warning("warmup of %d blocks on node %s failed: %s", len(batch), node.id, exc)
                return
        report.blocks_fetched += answer["fetched"]
        report.blocks_already_cached += answer["cached"]
        report.bytes_fetched += answer["bytes"]
        report.errors += len(answer["errors"])
        report.error_messages.extend(answer["errors"])
        if progress:
            progress(len(batch), answer["bytes"])

    async def warm_node(node_id: str, node_refs: list[BlockRef]) -> None:
        node = client.ring.nodes[node_id]
        try:
            present = await _present(client, node, node_refs)
        except RingcacheError as exc:
            log.warning("node %s did not answer a presence query: %s", node_id, exc)
            present = [False] * len(node_refs)
        missing = [r for r, p in zip(node_refs, present, strict=True) if not p]
        cached = len(node_refs) - len(missing)
        report.blocks_already_cached += cached
        if progress and cached:
            progress(cached, 0)
        # The slots are taken first come, first served, so the nodes are warmed mostly one
        # after another, each with all the blocks in flight: a node's CPU per byte is lower
        # with 16 of its own in flight than three nodes' with 5 each (0.83 against 0.95
        # s/GiB when the nodes' batches were interleaved; loadtest/results/warmup.md).
        await asyncio.gather(
            *(
                warm_batch(node, missing[i : i + WARM_BATCH])
                for i in range(0, len(missing), WARM_BATCH)
            )
        )

    await asyncio.gather(*(warm_node(n, r) for n, r in groups.items()))
    report.seconds = time.monotonic() - started
    return report


async def check(client: CacheClient, sources: Iterable[str]) -> CheckReport:
    """How many of the sources' blocks their owners hold; changes nothing."""
    refs = plan(client, await list_sources(client, sources))
    report = CheckReport(blocks_total=len(refs))
    for node_id, node_refs in _by_owner(client, refs).items():
        try:
            present = await _present(client, client.ring.nodes[node_id], node_refs)
        except RingcacheError as exc:
            log.warning("node %s did not answer a presence query: %s", node_id, exc)
            present = [False] * len(node_refs)
        for ref, here in zip(node_refs, present, strict=True):
            counts = report.by_dir.setdefault(posixpath.dirname(ref.url), [0, 0])
            counts[0] += 1
            counts[1] += here
            report.blocks_cached += here
    return report


async def evict(client: CacheClient, sources: Iterable[str]) -> int:
    """Drop the sources' blocks from every node that may hold them; returns how many."""
    refs = plan(client, await list_sources(client, sources))
    nodes = list(client.ring.nodes.values())
    ids = [r.id for r in refs]
    evicted = 0
    for node in nodes:
        for start in range(0, len(ids), QUERY_BATCH):
            try:
                answer = await client.node_call(
                    node, "/v1/blocks/evict", {"ids": ids[start : start + QUERY_BATCH]}
                )
            except RingcacheError as exc:
                log.warning("node %s did not evict: %s", node.id, exc)
                continue
            evicted += answer["evicted"]
    return evicted
