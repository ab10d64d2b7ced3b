"""s3gate's configuration: its table of settings, and the validated :class:`GatewayConfig`.

Each setting is declared once in :data:`SETTINGS`: a flag of ``s3gate --help``, a key of
the ``--config`` TOML file and a ``RINGCACHE_<NAME>`` environment variable. Everything,
the keys file included, is validated once at start with a one-line message.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clientlib.auth import Credentials
from clientlib.cluster import ADDR_RE
from clientlib.config import (
    HOSTPORT,
    SWITCH,
    TEXT,
    LocalPath,
    Number,
    Setting,
    SettingsTable,
    build,
    cluster_setting,
    etcd_settings,
    log_level_setting,
    node_ca_setting,
)
from clientlib.errors import BadRequest, ConfigError
from clientlib.etcd import EtcdTarget
from clientlib.urls import BUCKET_RE, split_url
from s3gate.keys import GatewayKey, load_keys

__all__ = ["SETTINGS", "GatewayConfig", "load_config"]


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway needs, validated (see :data:`SETTINGS` for each field)."""

    listen: tuple[str, int]
    etcd: EtcdTarget
    cluster: str
    keys: dict[str, GatewayKey]
    #: Credentials of anonymous requests and of keys without a ``token``.
    credentials: Credentials
    #: Buckets served from ``file://`` directories instead of S3, by name.
    buckets: dict[str, str]
    allow_anonymous: bool
    metrics_listen: tuple[str, int] | None
    #: ``host:port`` the nodes' dashboards read ``/metrics`` at (the ``gateways/<id>``
    #: record in etcd); None: the gateway is not registered.
    metrics_advertise: str | None
    region: str
    read_ahead: int
    spool_dir: Path | None
    peer_timeout: float
    ca: Path | None
    log_level: str


def _bucket(value: Any, what: str) -> tuple[str, str]:
    name, sep, url = str(value).partition("=")
    if not sep or not BUCKET_RE.fullmatch(name):
        raise ConfigError(f"{what}: {value!r} is not NAME=file:///dir (NAME an S3 bucket name)")
    try:
        origin, path = split_url(url)
    except BadRequest as exc:
        raise ConfigError(f"{what} {name}: {exc}") from None
    if origin != "file://" or not Path(path).is_dir():
        raise ConfigError(f"{what} {name}: {url} is not a file:/// directory")
    return name, "file://" + str(Path(path).resolve())


SETTINGS = SettingsTable(
    "s3gate",
    "Serve the S3 API in front of a ringcache cluster: S3 clients read existing buckets "
    "through the cache by pointing their endpoint here; writes pass through to the origin "
    "and fill the cache.",
    [
        Setting("listen", HOSTPORT, "where to serve S3", required=True, metavar="HOST:PORT"),
        *etcd_settings(),
        cluster_setting(),
        Setting(
            "keys",
            LocalPath(must="file"),
            "TOML file of [[keys]] access_key, secret_key, token",
            required=True,
            metavar="FILE",
        ),
        Setting(
            "token_file",
            LocalPath(must="file"),
            "token (or the cluster secret) of anonymous requests and of keys without a token",
            metavar="PATH",
        ),
        Setting(
            "bucket",
            _bucket,
            "serve the bucket NAME from a local directory instead of S3",
            many=True,
            metavar="NAME=file:///dir",
        ),
        Setting(
            "allow_anonymous",
            SWITCH,
            "serve unsigned requests, with --token-file's scope and rights "
            "(without one: read-only, everything the gateway reads)",
            default=False,
        ),
        Setting(
            "metrics_listen",
            HOSTPORT,
            "serve Prometheus metrics at http://HOST:PORT/metrics",
            metavar="HOST:PORT",
        ),
        Setting(
            "metrics_advertise",
            HOSTPORT,
            "where the nodes' dashboards reach --metrics-listen (registered in etcd)",
            shown_default="--metrics-listen, unless it is 0.0.0.0 or ::",
            metavar="HOST:PORT",
        ),
        Setting("region", TEXT, "the region GetBucketLocation answers", default="us-east-1"),
        Setting(
            "read_ahead",
            Number(int, 0, 64),
            "blocks fetched ahead of the one a GET is sending",
            default=4,
            metavar="N",
        ),
        Setting(
            "spool_dir",
            LocalPath(must="dir"),
            "where uploads are held until they are sent to the origin",
            shown_default="$TMPDIR",
            metavar="PATH",
        ),
        Setting(
            "peer_timeout",
            Number(float, 0.1, 600.0),
            "longest wait for a cache node's answer before the next owner or the origin",
            default=15.0,
            metavar="SECONDS",
        ),
        node_ca_setting(),
        log_level_setting(),
    ],
    synopsis="s3gate --listen HOST:PORT --etcd URL --keys FILE",
)


def _metrics_advertise(
    listen: tuple[str, int] | None, advertise: tuple[str, int] | None
) -> str | None:
    if advertise is not None:
        if listen is None:
            raise ConfigError("--metrics-advertise needs --metrics-listen")
        host, port = advertise
    elif listen is None or listen[0] in ("0.0.0.0", "::", ""):
        return None
    else:
        host, port = listen
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not ADDR_RE.fullmatch(addr):
        raise ConfigError(f"--metrics-advertise {addr}: not a plain HOST:PORT")
    return addr


def load_config(argv: list[str] | None = None) -> GatewayConfig:
    """Parse flags (and the file, environment and keys file) into a :class:`GatewayConfig`."""
    parser: argparse.ArgumentParser = SETTINGS.parser()
    values = SETTINGS.resolve(parser.parse_args(argv))
    credentials = Credentials.from_file(values["token_file"])
    buckets = dict(values["bucket"])
    if len(buckets) != len(values["bucket"]):
        raise ConfigError("--bucket: a bucket name is given twice")
    return build(
        GatewayConfig,
        values,
        metrics_advertise=_metrics_advertise(values["metrics_listen"], values["metrics_advertise"]),
        etcd=EtcdTarget.from_settings(values),
        keys=load_keys(values["keys"], credentials),
        credentials=credentials,
        buckets=buckets,
    )
