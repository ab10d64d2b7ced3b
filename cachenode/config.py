"""cachenode's configuration: one dataclass, filled from TOML, environment and flags.

See ``config/cachenode.toml`` for a commented example; every flag of ``cachenode --help``
is also a TOML key (same name, ``_`` for ``-``) and a ``RINGCACHE_<NAME>`` variable.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachenode.store import CacheDirSpec
from clientlib.auth import load_secret
from clientlib.cluster import check_cluster_name, check_node_id
from clientlib.config import (
    ETCD_SETTINGS,
    OneLineParser,
    add_cluster_arguments,
    check_log_level,
    layered_settings,
    parse_hostport,
    parse_size,
)
from clientlib.errors import ConfigError
from clientlib.etcd import EtcdTarget

__all__ = ["NodeConfig", "build_parser", "load_config"]

DEFAULT_DIR_SIZE = "100GiB"


@dataclass(frozen=True)
class NodeConfig:
    """Everything one cachenode needs, validated."""

    listen: tuple[str, int]
    advertise: str
    cache_dirs: list[CacheDirSpec]
    etcd: EtcdTarget
    cluster: str
    node_id: str | None = None
    weight: float | None = None
    free_space_ratio: float = 0.1
    memory_cache: int = 128 * 1024 * 1024
    file_roots: list[Path] = field(default_factory=list)
    origin_max_inflight: int = 32
    serve_slots: int = 64
    eviction: str = "s3fifo"
    lease_ttl: int = 10
    drain_grace: float = 2.0
    shutdown_timeout: float = 30.0
    log_level: str = "INFO"
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="cachenode",
        description="ringcache cache node: keeps blocks of objects on local cache dirs, "
        "serves them over HTTP, reads through to the origin on a miss, and registers "
        "itself in etcd.",
    )
    add_cluster_arguments(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (required)")
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="address peers use to reach this node (default: --listen)",
    )
    p.add_argument(
        "--cache-dir",
        dest="cache_dir",
        action="append",
        default=[],
        metavar="PATH[:SIZE]",
        help=f"a cache directory and its size (default size {DEFAULT_DIR_SIZE}); repeatable",
    )
    p.add_argument(
        "--node-id",
        dest="node_id",
        metavar="ID",
        help="stable node id (default: generated once and kept in the first cache dir)",
    )
    p.add_argument("--weight", type=float, help="ring weight (default: capacity in GiB)")
    p.add_argument(
        "--free-space-ratio",
        dest="free_space_ratio",
        type=float,
        help="keep at least this fraction of each cache disk free (default 0.1)",
    )
    p.add_argument(
        "--file-root",
        dest="file_root",
        action="append",
        default=[],
        metavar="PATH",
        help="allow file:// origins under PATH (repeatable; none allowed by default)",
    )
    p.add_argument(
        "--memory-cache",
        dest="memory_cache",
        metavar="SIZE",
        help="memory for hot small blocks (up to 256 KiB), served without disk reads "
        "and still checksummed on every serve; 0 turns it off (default 128MiB)",
    )
    p.add_argument(
        "--origin-max-inflight",
        dest="origin_max_inflight",
        type=int,
        help="origin requests this node has in flight at most (default 32)",
    )
    p.add_argument(
        "--serve-slots",
        dest="serve_slots",
        type=int,
        help="block requests served at once; beyond it tenants queue in fair shares (default 64)",
    )
    p.add_argument("--eviction", choices=["s3fifo", "lru"], help="eviction policy")
    p.add_argument("--lease-ttl", dest="lease_ttl", type=int, help="etcd lease TTL, seconds")
    p.add_argument(
        "--drain-grace",
        dest="drain_grace",
        type=float,
        help="seconds between leaving the ring and closing the port on SIGTERM (default 2)",
    )
    p.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout",
        type=float,
        help="seconds to let in-flight requests finish on SIGTERM (default 30)",
    )
    p.add_argument(
        "--token-file",
        dest="token_file",
        metavar="PATH",
        help="the cluster secret: serve data only to requests signed with tokens derived "
        "from it (default: no authentication)",
    )
    p.add_argument("--tls-cert", dest="tls_cert", metavar="PEM", help="serve HTTPS with this cert")
    p.add_argument("--tls-key", dest="tls_key", metavar="PEM", help="the key of --tls-cert")
    return p


NAMES = [
    "listen",
    "advertise",
    "cache_dir",
    *ETCD_SETTINGS,
    "cluster",
    "node_id",
    "weight",
    "free_space_ratio",
    "memory_cache",
    "file_root",
    "origin_max_inflight",
    "serve_slots",
    "eviction",
    "lease_ttl",
    "drain_grace",
    "shutdown_timeout",
    "log_level",
    "token_file",
    "tls_cert",
    "tls_key",
    "ca",
]


def _cache_dir(value: str) -> CacheDirSpec:
    path, sep, size = str(value).partition(":")
    if not path:
        raise ConfigError(f"--cache-dir {value!r}: want PATH[:SIZE]")
    nbytes = parse_size(size if sep else DEFAULT_DIR_SIZE, f"--cache-dir {value}")
    if nbytes < 1024 * 1024:
        raise ConfigError(f"--cache-dir {value!r}: size must be at least 1MiB")
    return CacheDirSpec(Path(path).absolute(), nbytes)


def _number(settings: dict[str, Any], name: str, kind: type, lo: float, hi: float) -> Any:
    value = settings[name]
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not a number") from None
    if not lo <= number <= hi:
        raise ConfigError(f"--{name.replace('_', '-')}: {number} is outside [{lo}, {hi}]")
    return number


def load_config(argv: list[str] | None = None) -> NodeConfig:
    """Parse flags (and the file and environment they point at) into a :class:`NodeConfig`."""
    args = build_parser().parse_args(argv)
    s = layered_settings(args, NAMES, args.config)
    for required in ("listen", "etcd"):
        if not s.get(required):
            raise ConfigError(f"--{required} is required")
    if not s.get("cache_dir"):
        raise ConfigError("at least one --cache-dir PATH[:SIZE] is required")
    listen = parse_hostport(s["listen"], "--listen")
    advertise = s.get("advertise") or f"{listen[0]}:{listen[1]}"
    parse_hostport(advertise, "--advertise")
    if listen[0] in ("0.0.0.0", "::") and not s.get("advertise"):
        raise ConfigError("--advertise HOST:PORT is required when listening on all interfaces")
    dirs = [_cache_dir(d) for d in s["cache_dir"]]
    if len({d.path for d in dirs}) != len(dirs):
        raise ConfigError("--cache-dir: the same directory is given twice")
    etcd = EtcdTarget.from_settings(s)
    kwargs: dict[str, Any] = {}
    if s.get("weight") is not None:
        kwargs["weight"] = _number(s, "weight", float, 0.001, 1e6)
    if s.get("free_space_ratio") is not None:
        kwargs["free_space_ratio"] = _number(s, "free_space_ratio", float, 0.0, 0.9)
    if s.get("memory_cache") is not None:
        kwargs["memory_cache"] = parse_size(s["memory_cache"], "--memory-cache")
    if s.get("origin_max_inflight") is not None:
        kwargs["origin_max_inflight"] = _number(s, "origin_max_inflight", int, 1, 4096)
    if s.get("serve_slots") is not None:
        kwargs["serve_slots"] = _number(s, "serve_slots", int, 1, 65536)
    if s.get("lease_ttl") is not None:
        kwargs["lease_ttl"] = _number(s, "lease_ttl", int, 2, 300)
    if s.get("drain_grace") is not None:
        kwargs["drain_grace"] = _number(s, "drain_grace", float, 0, 600)
    if s.get("shutdown_timeout") is not None:
        kwargs["shutdown_timeout"] = _number(s, "shutdown_timeout", float, 0, 3600)
    if s.get("eviction") is not None:
        if s["eviction"] not in ("s3fifo", "lru"):
            raise ConfigError(f"--eviction: {s['eviction']!r} is not s3fifo or lru")
        kwargs["eviction"] = s["eviction"]
    if s.get("log_level") is not None:
        kwargs["log_level"] = check_log_level(s["log_level"])
    if s.get("token_file"):
        load_secret(s["token_file"])
        kwargs["token_file"] = Path(s["token_file"])
    if bool(s.get("tls_cert")) != bool(s.get("tls_key")):
        raise ConfigError("--tls-cert and --tls-key go together")
    for name in ("tls_cert", "tls_key", "ca"):
        if s.get(name):
            if not Path(s[name]).is_file():
                raise ConfigError(f"--{name.replace('_', '-')} {s[name]}: no such file")
            kwargs[name] = Path(s[name])
    for root in s.get("file_root", []):
        if not Path(root).is_dir():
            raise ConfigError(f"--file-root {root}: not a directory")
    return NodeConfig(
        listen=listen,
        advertise=advertise,
        cache_dirs=dirs,
        etcd=etcd,
        cluster=check_cluster_name(s.get("cluster") or "default"),
        node_id=check_node_id(s["node_id"]) if s.get("node_id") else None,
        file_roots=[Path(r).resolve() for r in s.get("file_root", [])],
        **kwargs,
    )
