"""mountd's configuration: one dataclass, filled from TOML, environment and flags.

Every flag of ``mountd --help`` is also a TOML key (same name, ``_`` for ``-``) and a
``RINGCACHE_<NAME>`` environment variable; flags win over the environment, which wins
over the file. Everything is validated once, before the mount, with a one-line message.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clientlib.auth import Credentials
from clientlib.cluster import check_cluster_name
from clientlib.config import (
    ETCD_SETTINGS,
    OneLineParser,
    add_cluster_arguments,
    check_log_level,
    layered_settings,
    parse_hostport,
    parse_size,
)
from clientlib.errors import BadRequest, ConfigError
from clientlib.etcd import EtcdTarget
from clientlib.urls import split_url

__all__ = ["MountConfig", "build_parser", "load_config"]

DEFAULT_LOCAL_CACHE_SIZE = "10GiB"


@dataclass(frozen=True)
class MountConfig:
    """Everything one mount needs, validated."""

    source: str
    mountpoint: Path
    etcd: EtcdTarget
    cluster: str = "default"
    local_cache: Path | None = None
    local_cache_bytes: int = 0
    read_only: bool = False
    metrics_listen: tuple[str, int] | None = None
    foreground: bool = False
    attr_ttl: float = 5.0
    prefetch_blocks: int = 8
    memory_cache_bytes: int = 256 * 1024 * 1024
    spool_dir: Path | None = None
    max_rewrite_bytes: int = 256 * 1024 * 1024
    op_timeout: float = 60.0
    peer_timeout: float = 15.0
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    allow_other: bool = False
    log_level: str = "INFO"
    log_file: Path | None = None
    token_file: Path | None = None
    ca: Path | None = None
    #: Bytes/s of this mount's downloads and of its uploads (0: no limit); mountd.limits.
    download_limit: int = 0
    upload_limit: int = 0

    def url(self, path: str) -> str:
        """The source URL of the mount-relative ``path`` ('' is the root)."""
        return f"{self.source}/{path}" if path else self.source

    def dir_url(self, path: str) -> str:
        """The prefix URL of the directory ``path``: always ends in ``/``."""
        return f"{self.source}/{path}/" if path else f"{self.source}/"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="mountd",
        description="Mount an s3:// or file:// source as a POSIX file tree that reads "
        "through the ringcache cluster (local memory, then the cache nodes, then the "
        "origin) and writes whole objects back to the origin on close() and fsync().",
    )
    add_cluster_arguments(p)
    p.add_argument("source", nargs="?", help="s3://bucket[/prefix] or file:///dir")
    p.add_argument("mountpoint", nargs="?", help="an existing empty directory")
    p.add_argument(
        "--local-cache",
        dest="local_cache",
        metavar="PATH[:SIZE]",
        help=f"an on-disk block cache on this machine (default size {DEFAULT_LOCAL_CACHE_SIZE})",
    )
    p.add_argument(
        "--read-only",
        dest="read_only",
        action="store_const",
        const=True,
        help="refuse every change with EROFS",
    )
    p.add_argument(
        "--metrics-listen",
        dest="metrics_listen",
        metavar="HOST:PORT",
        help="serve the client's Prometheus metrics at http://HOST:PORT/metrics",
    )
    p.add_argument(
        "--foreground",
        action="store_const",
        const=True,
        help="stay in the foreground, logging to stderr (default: run as a daemon)",
    )
    p.add_argument(
        "--attr-ttl",
        dest="attr_ttl",
        type=float,
        metavar="SECONDS",
        help="how long sizes, versions and listings are trusted before the origin is asked "
        "again (default 5)",
    )
    p.add_argument(
        "--prefetch-blocks",
        dest="prefetch_blocks",
        type=int,
        metavar="N",
        help="blocks fetched ahead of a sequential reader, in parallel (default 8)",
    )
    p.add_argument(
        "--memory-cache",
        dest="memory_cache",
        metavar="SIZE",
        help="in-memory block tier of this mount (default 256MiB)",
    )
    p.add_argument(
        "--spool-dir",
        dest="spool_dir",
        metavar="PATH",
        help="where files being written are spooled before upload (default: $TMPDIR)",
    )
    p.add_argument(
        "--max-rewrite",
        dest="max_rewrite",
        metavar="SIZE",
        help="largest existing object that may be opened for writing without O_TRUNC; "
        "larger ones are refused with EOPNOTSUPP (default 256MiB)",
    )
    p.add_argument(
        "--op-timeout",
        dest="op_timeout",
        type=float,
        metavar="SECONDS",
        help="longest a metadata operation or a read may take before it fails with EIO "
        "(default 60)",
    )
    p.add_argument(
        "--peer-timeout",
        dest="peer_timeout",
        type=float,
        metavar="SECONDS",
        help="longest wait for a cache node's answer before the next owner or the origin is "
        "asked; a cold block includes the node's own origin fetch (default 15)",
    )
    p.add_argument(
        "--download-limit",
        dest="download_limit",
        metavar="RATE",
        help="cap on the bytes/s this mount pulls in from cache nodes and the origin, "
        "e.g. 50MiB (default: no limit)",
    )
    p.add_argument(
        "--upload-limit",
        dest="upload_limit",
        metavar="RATE",
        help="cap on the bytes/s this mount uploads to the origin, e.g. 20MiB (default: no limit)",
    )
    p.add_argument(
        "--uid",
        type=int,
        help="owner of files that have no stored owner (default: your uid)",
    )
    p.add_argument(
        "--gid",
        type=int,
        help="group of files that have no stored group (default: your gid)",
    )
    p.add_argument(
        "--umask",
        metavar="MASK",
        help="octal umask of files that have no stored mode (default 022)",
    )
    p.add_argument(
        "--allow-other",
        dest="allow_other",
        action="store_const",
        const=True,
        help="let other users use the mount (needs user_allow_other in /etc/fuse.conf)",
    )
    p.add_argument(
        "--log-file",
        dest="log_file",
        metavar="PATH",
        help="log here as a daemon (default: syslog)",
    )
    p.add_argument(
        "--token-file",
        dest="token_file",
        metavar="PATH",
        help="token (see cachectl token create) to sign requests to the cache nodes with",
    )
    return p


NAMES = [
    "source",
    "mountpoint",
    *ETCD_SETTINGS,
    "cluster",
    "local_cache",
    "read_only",
    "metrics_listen",
    "foreground",
    "attr_ttl",
    "prefetch_blocks",
    "memory_cache",
    "spool_dir",
    "max_rewrite",
    "op_timeout",
    "peer_timeout",
    "uid",
    "gid",
    "umask",
    "allow_other",
    "log_level",
    "log_file",
    "token_file",
    "ca",
    "download_limit",
    "upload_limit",
]


def _source(value: str) -> str:
    try:
        origin, key = split_url(str(value))
    except BadRequest as exc:
        raise ConfigError(f"SOURCE: {exc}") from None
    if origin == "file://":
        if not Path(key).is_dir():
            raise ConfigError(f"SOURCE {value}: not a directory")
        return "file://" + key.rstrip("/") if key != "/" else "file://"
    key = key.strip("/")
    return f"{origin}/{key}" if key else origin


def _number(settings: dict[str, Any], name: str, kind: type, lo: float, hi: float) -> Any:
    value = settings[name]
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not a number") from None
    if not lo <= number <= hi:
        raise ConfigError(f"--{name.replace('_', '-')}: {number} is outside [{lo}, {hi}]")
    return number


def _rate(settings: dict[str, Any], name: str) -> int:
    """A bandwidth: a size per second (``50MiB``, ``50MiB/s``); 0 is no limit."""
    value = settings[name]
    text = value if isinstance(value, int) else str(value).strip()
    if isinstance(text, str) and text.lower().endswith("/s"):
        text = text[:-2]
    flag = f"--{name.replace('_', '-')}"
    rate = parse_size(text, flag)
    if 0 < rate < 1024:
        raise ConfigError(f"{flag}: {value!r} is below 1KiB/s (0 means no limit)")
    return rate


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes", "on")


def load_config(argv: list[str] | None = None) -> MountConfig:
    """Parse flags (and the file and environment they point at) into a :class:`MountConfig`."""
    args = build_parser().parse_args(argv)
    s = layered_settings(args, NAMES, args.config)
    for required in ("source", "mountpoint"):
        if not s.get(required):
            raise ConfigError(f"{required.upper()} is required: mountd SOURCE MOUNTPOINT")
    etcd = EtcdTarget.from_settings(s)
    mountpoint = Path(s["mountpoint"]).absolute()
    if not mountpoint.is_dir():
        raise ConfigError(f"MOUNTPOINT {mountpoint}: not a directory")
    kwargs: dict[str, Any] = {}
    if s.get("local_cache"):
        path, sep, size = str(s["local_cache"]).partition(":")
        if not path:
            raise ConfigError(f"--local-cache {s['local_cache']!r}: want PATH[:SIZE]")
        nbytes = parse_size(size if sep else DEFAULT_LOCAL_CACHE_SIZE, "--local-cache")
        if nbytes < 16 * 1024 * 1024:
            raise ConfigError("--local-cache: size must be at least 16MiB")
        kwargs["local_cache"] = Path(path).absolute()
        kwargs["local_cache_bytes"] = nbytes
    if s.get("metrics_listen"):
        kwargs["metrics_listen"] = parse_hostport(s["metrics_listen"], "--metrics-listen")
    if s.get("attr_ttl") is not None:
        kwargs["attr_ttl"] = _number(s, "attr_ttl", float, 0.0, 86400.0)
    if s.get("prefetch_blocks") is not None:
        kwargs["prefetch_blocks"] = _number(s, "prefetch_blocks", int, 0, 64)
    if s.get("memory_cache") is not None:
        kwargs["memory_cache_bytes"] = parse_size(s["memory_cache"], "--memory-cache")
    if s.get("spool_dir"):
        spool = Path(s["spool_dir"]).absolute()
        if not spool.is_dir():
            raise ConfigError(f"--spool-dir {spool}: not a directory")
        kwargs["spool_dir"] = spool
    if s.get("max_rewrite") is not None:
        kwargs["max_rewrite_bytes"] = parse_size(s["max_rewrite"], "--max-rewrite")
    if s.get("op_timeout") is not None:
        kwargs["op_timeout"] = _number(s, "op_timeout", float, 1.0, 3600.0)
    if s.get("peer_timeout") is not None:
        kwargs["peer_timeout"] = _number(s, "peer_timeout", float, 0.1, 600.0)
    kwargs["uid"] = (
        _number(s, "uid", int, 0, 2**32 - 2) if s.get("uid") is not None else os.getuid()
    )
    kwargs["gid"] = (
        _number(s, "gid", int, 0, 2**32 - 2) if s.get("gid") is not None else os.getgid()
    )
    if s.get("umask") is not None:
        try:
            kwargs["umask"] = int(str(s["umask"]), 8)
        except ValueError:
            raise ConfigError(f"--umask: {s['umask']!r} is not an octal mask") from None
        if not 0 <= kwargs["umask"] <= 0o777:
            raise ConfigError(f"--umask: {s['umask']!r} is not between 000 and 777")
    if s.get("log_level") is not None:
        kwargs["log_level"] = check_log_level(s["log_level"])
    if s.get("log_file"):
        kwargs["log_file"] = Path(s["log_file"]).absolute()
    for name in ("download_limit", "upload_limit"):
        if s.get(name) is not None:
            kwargs[name] = _rate(s, name)
    if s.get("token_file"):
        Credentials.from_file(s["token_file"])  # a bad token file fails now, not per read
        kwargs["token_file"] = Path(s["token_file"]).absolute()
    if s.get("ca"):
        if not Path(s["ca"]).is_file():
            raise ConfigError(f"--ca {s['ca']}: no such file")
        kwargs["ca"] = Path(s["ca"]).absolute()
    return MountConfig(
        source=_source(s["source"]),
        mountpoint=mountpoint,
        etcd=etcd,
        cluster=check_cluster_name(s.get("cluster") or "default"),
        read_only=_flag(s.get("read_only", False)),
        foreground=_flag(s.get("foreground", False)),
        allow_other=_flag(s.get("allow_other", False)),
        **kwargs,
    )
