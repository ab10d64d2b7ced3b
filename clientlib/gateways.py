"""S3 gateways' records in etcd (``gateways/<id>``), and their figures for the dashboard.

A gateway registers where its ``/metrics`` can be reached, so the nodes' dashboard can
show it; the record is nothing more. It lives under its own prefix, beside ``nodes/``:
no ring, client or node routes a block by it. Like a node record it is untrusted: its id
and address must be a plain id and ``host:port``, and what is read from that address is
reduced to a few bounded numbers (:func:`gateway_figures`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from clientlib.cluster import ADDR_RE, NODE_ID_RE, parse_record, record_json
from clientlib.errors import BadRequest
from clientlib.ring import read_records

__all__ = [
    "GatewayInfo",
    "gateway_figures",
    "gateway_key",
    "gateway_records",
    "gateways_prefix",
]

#: The most of a gateway's /metrics read (its text is about 20 KiB).
MAX_METRICS_BYTES = 1 << 20
#: The most gateways, and S3 operations per gateway, a dashboard shows.
MAX_GATEWAYS = 64
MAX_OPS = 32
OP_RE = re.compile(r"[A-Za-z0-9]{1,40}")
BLOCK_SOURCES = ("local", "peer", "origin")


def gateways_prefix(cluster: str) -> bytes:
    return f"/ringcache/{cluster}/gateways/".encode()


def gateway_key(cluster: str, gateway_id: str) -> bytes:
    return gateways_prefix(cluster) + gateway_id.encode()


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """One gateway's record under ``gateways/<id>``, kept alive by the gateway's lease."""

    id: str
    #: ``host:port`` of the gateway's ``--metrics-listen`` (plain HTTP ``/metrics``).
    metrics_addr: str
    started_at: float = 0.0

    def to_json(self) -> bytes:
        return record_json(self)

    @classmethod
    def from_json(cls, raw: bytes) -> GatewayInfo:
        """Parse a record; a malformed one is a :class:`BadRequest` (readers skip it)."""
        info = parse_record(
            raw,
            "gateway",
            lambda doc: cls(
                id=str(doc["id"]),
                metrics_addr=str(doc["metrics_addr"]),
                started_at=float(doc.get("started_at") or 0),
            ),
        )
        if not ADDR_RE.fullmatch(info.metrics_addr) or not NODE_ID_RE.fullmatch(info.id):
            raise BadRequest(f"gateway record with a malformed id or address {info.id[:80]!r}")
        return info


def gateway_records(cluster: str, entries: Iterable[Any]) -> list[GatewayInfo]:
    """The gateway records among etcd ``entries`` of ``cluster``, sorted by id."""
    return read_records(gateways_prefix(cluster), entries, GatewayInfo.from_json, "gateway")


def _figures(text: str) -> dict[str, Any]:
    requests: dict[str, int] = {}
    errors = 0
    bytes_out = bytes_in = 0
    blocks = dict.fromkeys(BLOCK_SOURCES, 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = int(sample.value)
            if sample.name == "ringcache_gateway_requests_total":
                op = sample.labels.get("op", "")
                if OP_RE.fullmatch(op) and (op in requests or len(requests) < MAX_OPS):
                    requests[op] = requests.get(op, 0) + value
                if sample.labels.get("code", "").startswith(("4", "5")):
                    errors += value
            elif sample.name == "ringcache_gateway_bytes_total":
                if sample.labels.get("direction") == "out":
                    bytes_out += value
                elif sample.labels.get("direction") == "in":
                    bytes_in += value
            elif sample.name == "ringcache_client_block_reads_total":
                source = sample.labels.get("source", "")
                if source in blocks:
                    blocks[source] += value
    return {
        "requests": requests,
        "errors": errors,
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
        "blocks": blocks,
    }


async def _one(session: aiohttp.ClientSession, gateway: GatewayInfo) -> dict[str, Any]:
    row: dict[str, Any] = {"id": gateway.id, "metrics_addr": gateway.metrics_addr}
    try:
        url = f"http://{gateway.metrics_addr}/metrics"
        body = bytearray()
        async with session.get(url, allow_redirects=False) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    raise BadRequest("/metrics larger than 1 MiB")
        row.update(_figures(body.decode()), state="up")
    except (TimeoutError, aiohttp.ClientError, BadRequest) as exc:
        row.update(state="unreachable", reason=str(exc)[:200] or type(exc).__name__)
    # A hostile answer (NaN, +Inf, lines the parser trips on): none of its text is echoed.
    except (ValueError, ArithmeticError, LookupError):
        row.update(state="unreachable", reason="malformed /metrics")
    return row


async def gateway_figures(
    gateways: list[GatewayInfo], timeout: float = 2.0
) -> list[dict[str, Any]]:
    """Each gateway's counters, read from its ``/metrics``: ``requests`` by S3 operation,
    ``errors`` (4xx and 5xx answers), ``bytes_out``, ``bytes_in``, and the ``blocks`` its
    GETs read by source; ``state`` is ``up``, or ``unreachable`` with a ``reason``.

    Only these numbers are kept of what a gateway's address answers (at most 1 MiB read,
    no redirect followed), and at most :data:`MAX_GATEWAYS` gateways are asked.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        return list(await asyncio.gather(*(_one(session, g) for g in gateways[:MAX_GATEWAYS])))
