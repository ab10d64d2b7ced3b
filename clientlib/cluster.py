"""The cluster's layout in etcd: node records, cluster settings and their keys.

Nodes write these records and clients read them, so the JSON shapes here are the
contract of ``shared/DESIGN.md`` ("Membership in etcd") and must not drift.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from clientlib.blocks import DEFAULT_BLOCK_SIZE, check_block_size
from clientlib.errors import BadRequest, ConfigError

__all__ = [
    "ClusterConfig",
    "NodeInfo",
    "check_cluster_name",
    "config_key",
    "node_key",
    "nodes_prefix",
    "parse_record",
    "record_json",
]

_R = TypeVar("_R")

DEFAULT_REPLICAS = 3

CLUSTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ADDR_RE = re.compile(r"[A-Za-z0-9.-]{1,253}:[0-9]{1,5}|\[[0-9A-Fa-f:.]{2,45}\]:[0-9]{1,5}")
NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

NodeState = Literal["active", "draining"]


def check_cluster_name(name: str) -> str:
    if not CLUSTER_RE.fullmatch(name):
        raise ConfigError(f"bad cluster name {name!r}: use letters, digits, '.', '_', '-'")
    return name


def check_node_id(node_id: str) -> str:
    if not NODE_ID_RE.fullmatch(node_id):
        raise ConfigError(f"bad node id {node_id!r}: use letters, digits, '.', '_', '-'")
    return node_id


def nodes_prefix(cluster: str) -> bytes:
    return f"/ringcache/{cluster}/nodes/".encode()


def node_key(cluster: str, node_id: str) -> bytes:
    return nodes_prefix(cluster) + node_id.encode()


def config_key(cluster: str) -> bytes:
    return f"/ringcache/{cluster}/config".encode()


def cluster_prefix(cluster: str) -> bytes:
    return f"/ringcache/{cluster}/".encode()


def record_json(record: Any) -> bytes:
    """A record dataclass as the compact JSON it is filed under in etcd."""
    return json.dumps(asdict(record), separators=(",", ":")).encode()


def parse_record(raw: bytes, what: str, build: Callable[[dict[str, Any]], _R]) -> _R:
    """The record ``build`` makes of the JSON object ``raw``; anything malformed (not
    JSON, a field missing or of the wrong type) is a :class:`BadRequest`, so readers skip
    it. Records come from etcd, which anyone with its credentials can write: untrusted."""
    try:
        return build(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"malformed {what} record: {exc}") from None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node's record under ``nodes/<id>``, kept alive by the node's lease."""

    id: str
    addr: str
    weight: float
    capacity_bytes: int
    state: NodeState = "active"
    started_at: float = 0.0
    #: ``https`` when the node serves TLS (``--tls-cert``); beyond the design's fields.
    scheme: str = "http"

    def to_json(self) -> bytes:
        return record_json(self)

    @classmethod
    def from_json(cls, raw: bytes) -> NodeInfo:
        """Parse a record; a malformed one is a :class:`BadRequest` (callers skip it)."""
        info = parse_record(
            raw,
            "node",
            lambda doc: cls(
                id=str(doc["id"]),
                addr=str(doc["addr"]),
                weight=float(doc.get("weight") or 0),
                capacity_bytes=int(doc.get("capacity_bytes") or 0),
                state=doc.get("state", "active"),
                started_at=float(doc.get("started_at") or 0),
                scheme=str(doc.get("scheme") or "http"),
            ),
        )
        # Clients and nodes connect to ``addr``: only a plain host:port, nothing else.
        if not ADDR_RE.fullmatch(info.addr) or not NODE_ID_RE.fullmatch(info.id):
            raise BadRequest(f"node record with a malformed id or address {info.addr[:80]!r}")
        if info.scheme not in ("http", "https"):
            raise BadRequest(f"node {info.id}: unknown scheme {info.scheme!r}")
        if info.state not in ("active", "draining"):
            raise BadRequest(f"node {info.id}: unknown state {info.state!r}")
        return info

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.addr}"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The settings under ``/ringcache/<cluster>/config`` every client must agree on.

    Unknown keys are kept in ``extra`` so an older node never drops a newer setting.
    ``origin_rate_limit`` (bytes/s) and ``origin_max_inflight`` bound what the whole
    cluster asks of the origin (0: no bound); each node takes its weight's share.
    """

    block_size: int = DEFAULT_BLOCK_SIZE
    #: Owners a hot block is spread over (the replication factor of hot blocks).
    replicas: int = DEFAULT_REPLICAS
    origin_rate_limit: int = 0
    origin_max_inflight: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "block_size": self.block_size,
            "replicas": self.replicas,
            "origin_rate_limit": self.origin_rate_limit,
            "origin_max_inflight": self.origin_max_inflight,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ClusterConfig:
        try:
            doc = dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"malformed cluster config: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ClusterConfig:
        """Validate every known setting; :class:`BadRequest` names the bad one."""
        doc = dict(doc)
        values: dict[str, int] = {}
        for key, default in SETTINGS.items():
            raw = doc.pop(key, default)
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise BadRequest(f"cluster setting {key}: {raw!r} is not an integer")
            values[key] = raw
        check_block_size(values["block_size"])
        if not 1 <= values["replicas"] <= 16:
            raise BadRequest(f"cluster setting replicas: {values['replicas']} is outside [1, 16]")
        for key in ("origin_rate_limit", "origin_max_inflight"):
            if values[key] < 0:
                raise BadRequest(f"cluster setting {key}: must not be negative (0: no limit)")
        return cls(**values, extra=doc)


#: Known cluster settings and their defaults (what `cachectl config set` accepts).
SETTINGS: dict[str, int] = {
    "block_size": DEFAULT_BLOCK_SIZE,
    "replicas": DEFAULT_REPLICAS,
    "origin_rate_limit": 0,
    "origin_max_inflight": 0,
}
