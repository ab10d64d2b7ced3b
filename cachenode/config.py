"""cachenode's configuration: its table of settings, and the validated :class:`NodeConfig`.

Each setting is declared once in :data:`SETTINGS`; it is a flag of ``cachenode --help``,
a key of the ``--config`` TOML file (see ``config/cachenode.toml``) and a
``RINGCACHE_<NAME>`` environment variable.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachenode.eviction import DEFAULT_POLICY, POLICIES
from cachenode.handoff import DEFAULT_WINDOW
from cachenode.store import DEFAULT_MEMORY_RECHECK, CacheDirSpec
from clientlib.auth import load_secret
from clientlib.cluster import check_node_id
from clientlib.config import (
    HOSTPORT,
    Choice,
    HostPort,
    LocalPath,
    Number,
    PathSize,
    Setting,
    SettingsTable,
    Size,
    build,
    cluster_setting,
    etcd_settings,
    log_level_setting,
)
from clientlib.errors import ConfigError
from clientlib.etcd import EtcdTarget

__all__ = ["SETTINGS", "NodeConfig", "build_parser", "load_config"]


@dataclass(frozen=True)
class NodeConfig:
    """Everything one cachenode needs, validated (see :data:`SETTINGS` for each field)."""

    listen: tuple[str, int]
    advertise: str
    cache_dirs: list[CacheDirSpec]
    etcd: EtcdTarget
    cluster: str
    node_id: str | None
    weight: float | None
    free_space_ratio: float
    memory_cache: int
    memory_recheck: float
    file_roots: list[Path]
    origin_max_inflight: int
    serve_slots: int
    eviction: str
    lease_ttl: int
    drain_grace: float
    handoff_window: float
    shutdown_timeout: float
    log_level: str
    token_file: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    ca: Path | None


def _secret_file(value: Any, what: str) -> Path:
    load_secret(value)  # a bad secret fails at start, not on the first request
    return Path(value)


def _node_id(value: Any, what: str) -> str:
    return check_node_id(str(value))


PEM = LocalPath(must="file")
CACHE_DIR = PathSize(default_size="100GiB", minimum=1024 * 1024)

SETTINGS = SettingsTable(
    "cachenode",
    "ringcache cache node: keeps blocks of objects on local cache dirs, serves them over "
    "HTTP, reads through to the origin on a miss, and registers itself in etcd.",
    [
        Setting("listen", HOSTPORT, "address to serve on", metavar="HOST:PORT", required=True),
        *etcd_settings(),
        Setting(
            "cache_dir",
            CACHE_DIR,
            f"a cache directory and its size (default size {CACHE_DIR.default_size})",
            metavar="PATH[:SIZE]",
            many=True,
            required=True,
        ),
        Setting(
            "advertise",
            HostPort(as_text=True),
            "address peers use to reach this node (required when listening on all interfaces)",
            shown_default="--listen",
            metavar="HOST:PORT",
        ),
        cluster_setting(),
        Setting(
            "node_id",
            _node_id,
            "stable node id",
            shown_default="generated once and kept in the first cache dir",
            metavar="ID",
        ),
        Setting(
            "weight", Number(float, 0.001, 1e6), "ring weight", shown_default="capacity in GiB"
        ),
        Setting(
            "free_space_ratio",
            Number(float, 0.0, 0.9),
            "keep at least this fraction of each cache disk free",
            default=0.1,
            metavar="RATIO",
        ),
        Setting(
            "file_root",
            LocalPath(must="dir", resolve=True),
            "allow file:// origins under PATH (none allowed by default)",
            metavar="PATH",
            many=True,
        ),
        Setting(
            "memory_cache",
            Size(),
            "memory for verified copies of hot blocks, served without reading or hashing "
            "their files (small ones are still hashed on every serve); 0 turns it off",
            default="128MiB",
            metavar="SIZE",
        ),
        Setting(
            "memory_recheck",
            Number(float, 0.001, 86400),
            "seconds a block is served from --memory-cache before its file is read and "
            "checked again",
            default=DEFAULT_MEMORY_RECHECK,
            metavar="SECONDS",
        ),
        Setting(
            "origin_max_inflight",
            Number(int, 1, 4096),
            "origin requests this node has in flight at most",
            default=32,
            metavar="N",
        ),
        Setting(
            "serve_slots",
            Number(int, 1, 65536),
            "block requests served at once; beyond it tenants queue in fair shares",
            default=64,
            metavar="N",
        ),
        Setting("eviction", Choice(tuple(POLICIES)), "eviction policy", default=DEFAULT_POLICY),
        Setting("lease_ttl", Number(int, 2, 300), "etcd lease TTL", default=10, metavar="SECONDS"),
        Setting(
            "drain_grace",
            Number(float, 0, 600),
            "seconds between leaving the ring and closing the port on SIGTERM",
            default=2.0,
            metavar="SECONDS",
        ),
        Setting(
            "handoff_window",
            Number(float, 0, 86400),
            "seconds after this node joins, or the ring changes, during which a miss first "
            "asks the block's previous owners (a scale-out or a drain keeps its hits); 0 "
            "turns that off",
            default=DEFAULT_WINDOW,
            metavar="SECONDS",
        ),
        Setting(
            "shutdown_timeout",
            Number(float, 0, 3600),
            "seconds to let in-flight requests finish on SIGTERM",
            default=30.0,
            metavar="SECONDS",
        ),
        log_level_setting(),
        Setting(
            "token_file",
            _secret_file,
            "the cluster secret: serve data only to requests signed with tokens derived from it",
            shown_default="no authentication",
            metavar="PATH",
        ),
        Setting("tls_cert", PEM, "serve HTTPS with this cert", metavar="PEM"),
        Setting("tls_key", PEM, "the key of --tls-cert", metavar="PEM"),
        Setting(
            "ca",
            PEM,
            "CA to verify cache nodes' TLS certificates with",
            shown_default="system store",
            metavar="PEM",
        ),
    ],
)


def build_parser() -> argparse.ArgumentParser:
    """``cachenode``'s argument parser, from :data:`SETTINGS`."""
    return SETTINGS.parser()


def load_config(argv: list[str] | None = None) -> NodeConfig:
    """Parse flags (and the file and environment they point at) into a :class:`NodeConfig`."""
    values = SETTINGS.resolve(build_parser().parse_args(argv))
    listen = values["listen"]
    if listen[0] in ("0.0.0.0", "::") and values["advertise"] is None:
        raise ConfigError("--advertise HOST:PORT is required when listening on all interfaces")
    dirs = [CacheDirSpec(path, nbytes) for path, nbytes in values["cache_dir"]]
    if len({d.path for d in dirs}) != len(dirs):
        raise ConfigError("--cache-dir: the same directory is given twice")
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    return build(
        NodeConfig,
        values,
        advertise=values["advertise"] or f"{listen[0]}:{listen[1]}",
        cache_dirs=dirs,
        etcd=EtcdTarget.from_settings(values),
        file_roots=values["file_root"],
    )
