"""mountd's configuration: its table of settings, and the validated :class:`MountConfig`.

Each setting is declared once in :data:`SETTINGS`; it is a flag of ``mountd --help`` (or,
for SOURCE and MOUNTPOINT, an argument), a key of the ``--config`` TOML file (see
``config/mountd.toml``) and a ``RINGCACHE_<NAME>`` environment variable. Everything is
validated once, before the mount, with a one-line message.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clientlib.auth import Credentials
from clientlib.config import (
    HOSTPORT,
    SWITCH,
    LocalPath,
    Number,
    PathSize,
    Rate,
    Setting,
    SettingsTable,
    Size,
    build,
    cluster_setting,
    etcd_settings,
    log_level_setting,
    node_ca_setting,
)
from clientlib.errors import BadRequest, ConfigError
from clientlib.etcd import EtcdTarget
from clientlib.urls import split_url
from mountd.cachedir import default_root

__all__ = ["AUTO", "SETTINGS", "MountConfig", "build_parser", "load_config"]


@dataclass(frozen=True)
class MountConfig:
    """Everything one mount needs, validated (see :data:`SETTINGS` for each field)."""

    source: str
    mountpoint: Path
    etcd: EtcdTarget
    cluster: str
    #: A directory of the user's choice, :data:`AUTO` (one of :mod:`mountd.cachedir`'s,
    #: sized there) or None (off).
    local_cache: Path | Literal["auto"] | None
    local_cache_bytes: int
    local_cache_root: Path
    read_only: bool
    metrics_listen: tuple[str, int] | None
    foreground: bool
    attr_ttl: float
    prefetch_blocks: int
    memory_cache_bytes: int
    spool_dir: Path | None
    max_rewrite_bytes: int
    op_timeout: float
    peer_timeout: float
    hedge_delay: float
    uid: int
    gid: int
    umask: int
    allow_other: bool
    log_level: str
    log_file: Path | None
    token_file: Path | None
    ca: Path | None
    #: Bytes/s of this mount's downloads and of its uploads (0: no limit); mountd.throttle.
    download_limit: int
    upload_limit: int

    def url(self, path: str) -> str:
        """The source URL of the mount-relative ``path`` ('' is the root)."""
        return f"{self.source}/{path}" if path else self.source

    def dir_url(self, path: str) -> str:
        """The prefix URL of the directory ``path``: always ends in ``/``."""
        return f"{self.source}/{path}/" if path else f"{self.source}/"


def _source(value: Any, what: str) -> str:
    try:
        origin, key = split_url(str(value))
    except BadRequest as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if origin == "file://":
        if not Path(key).is_dir():
            raise ConfigError(f"{what} {value}: not a directory")
        return "file://" + key.rstrip("/") if key != "/" else "file://"
    key = key.strip("/")
    return f"{origin}/{key}" if key else origin


def _token_file(value: Any, what: str) -> Path:
    Credentials.from_file(value)  # a bad token file fails now, not per read
    return Path(value).absolute()


def _umask(value: Any, what: str) -> int:
    try:
        mask = int(str(value), 8)
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not an octal mask") from None
    if not 0 <= mask <= 0o777:
        raise ConfigError(f"{what}: {value!r} is not between 000 and 777")
    return mask


ID = Number(int, 0, 2**32 - 2)
LOCAL_CACHE = PathSize(default_size="10GiB", minimum=16 * 1024 * 1024)
AUTO = "auto"


def _local_cache(value: Any, what: str) -> tuple[Path | str | None, int]:
    """``auto``, ``off`` or ``PATH[:SIZE]``: (:data:`AUTO` or None or a path, bytes)."""
    if str(value) == AUTO:
        return AUTO, 0
    if str(value) == "off":
        return None, 0
    return LOCAL_CACHE(value, what)


SETTINGS = SettingsTable(
    "mountd",
    "Mount an s3:// or file:// source as a POSIX file tree that reads through the "
    "ringcache cluster (local memory, then the cache nodes, then the origin) and writes "
    "whole objects back to the origin on close() and fsync().",
    [
        Setting(
            "source", _source, "s3://bucket[/prefix] or file:///dir", positional=True, required=True
        ),
        Setting(
            "mountpoint",
            LocalPath(must="dir"),
            "an existing empty directory",
            positional=True,
            required=True,
        ),
        *etcd_settings(),
        cluster_setting(),
        log_level_setting(),
        node_ca_setting(),
        Setting(
            "local_cache",
            _local_cache,
            "the on-disk block tier on this machine: 'auto' is a private directory of "
            "this mount under --local-cache-root, sized from the free space there (see "
            "docs/mount.md); 'off'; or PATH[:SIZE] "
            f"(default size {LOCAL_CACHE.default_size}, at least 16MiB)",
            default=AUTO,
            metavar="auto|off|PATH[:SIZE]",
        ),
        Setting(
            "local_cache_root",
            LocalPath(),
            "where --local-cache auto keeps one directory per mount",
            default=lambda: str(default_root()),
            shown_default="/var/cache/ringcache/mounts for root, "
            "else $XDG_CACHE_HOME/ringcache/mounts",
            metavar="PATH",
        ),
        Setting("read_only", SWITCH, "refuse every change with EROFS", default=False),
        Setting(
            "metrics_listen",
            HOSTPORT,
            "serve the client's Prometheus metrics at http://HOST:PORT/metrics",
            metavar="HOST:PORT",
        ),
        Setting(
            "foreground",
            SWITCH,
            "stay in the foreground, logging to stderr (default: run as a daemon)",
            default=False,
        ),
        Setting(
            "attr_ttl",
            Number(float, 0.0, 86400.0),
            "how long sizes, versions and listings are trusted before the origin is asked again",
            default=5.0,
            metavar="SECONDS",
        ),
        Setting(
            "prefetch_blocks",
            Number(int, 0, 64),
            "blocks fetched ahead of a sequential reader, in parallel",
            default=8,
            metavar="N",
        ),
        Setting(
            "memory_cache",
            Size(),
            "in-memory block tier of this mount",
            default="256MiB",
            metavar="SIZE",
        ),
        Setting(
            "spool_dir",
            LocalPath(must="dir"),
            "where files being written are spooled before upload",
            shown_default="$TMPDIR",
            metavar="PATH",
        ),
        Setting(
            "max_rewrite",
            Size(),
            "largest existing object that may be opened for writing without O_TRUNC; "
            "larger ones are refused with EOPNOTSUPP",
            default="256MiB",
            metavar="SIZE",
        ),
        Setting(
            "op_timeout",
            Number(float, 1.0, 3600.0),
            "longest a metadata operation or a read may take before it fails with EIO",
            default=60.0,
            metavar="SECONDS",
        ),
        Setting(
            "peer_timeout",
            Number(float, 0.1, 600.0),
            "longest wait for a cache node's answer before the next owner or the origin is "
            "asked; a cold block includes the node's own origin fetch",
            default=15.0,
            metavar="SECONDS",
        ),
        Setting(
            "hedge_delay",
            Number(float, 0.05, 600.0),
            "how long a block's owner may take before its next owner is asked too, and, "
            "once every owner has had that long, the origin",
            default=1.0,
            metavar="SECONDS",
        ),
        Setting(
            "download_limit",
            Rate(),
            "cap on the bytes/s this mount pulls in from cache nodes and the origin, "
            "e.g. 50MiB; 0 is no limit",
            default=0,
            metavar="RATE",
        ),
        Setting(
            "upload_limit",
            Rate(),
            "cap on the bytes/s this mount uploads to the origin, e.g. 20MiB; 0 is no limit",
            default=0,
            metavar="RATE",
        ),
        Setting(
            "uid",
            ID,
            "owner of files that have no stored owner",
            default=os.getuid,
            shown_default="your uid",
        ),
        Setting(
            "gid",
            ID,
            "group of files that have no stored group",
            default=os.getgid,
            shown_default="your gid",
        ),
        Setting(
            "umask",
            _umask,
            "octal umask of files that have no stored mode",
            default="022",
            metavar="MASK",
        ),
        Setting(
            "allow_other",
            SWITCH,
            "let other users use the mount (needs user_allow_other in /etc/fuse.conf)",
            default=False,
        ),
        Setting(
            "log_file",
            LocalPath(),
            "log here as a daemon",
            shown_default="syslog",
            metavar="PATH",
        ),
        Setting(
            "token_file",
            _token_file,
            "token (see cachectl token create) to sign requests to the cache nodes with",
            metavar="PATH",
        ),
    ],
    synopsis="mountd SOURCE MOUNTPOINT",
)


def build_parser() -> argparse.ArgumentParser:
    """``mountd``'s argument parser, from :data:`SETTINGS`."""
    return SETTINGS.parser()


def load_config(argv: list[str] | None = None) -> MountConfig:
    """Parse flags (and the file and environment they point at) into a :class:`MountConfig`."""
    values = SETTINGS.resolve(build_parser().parse_args(argv))
    local_cache, local_cache_bytes = values["local_cache"]
    return build(
        MountConfig,
        values,
        etcd=EtcdTarget.from_settings(values),
        local_cache=local_cache,
        local_cache_bytes=local_cache_bytes,
        memory_cache_bytes=values["memory_cache"],
        max_rewrite_bytes=values["max_rewrite"],
    )
