"""What every daemon's configuration shares: layering and value parsing.

Settings are filled from a TOML file, then the environment (``RINGCACHE_<NAME>``), then
command-line flags, in that order, and validated once at start: a bad value is a
:class:`ConfigError` whose message names the setting, printed as one line by the CLIs.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

import humanfriendly

from clientlib.errors import ConfigError

__all__ = [
    "ETCD_SETTINGS",
    "OneLineParser",
    "add_cluster_arguments",
    "add_etcd_arguments",
    "check_log_level",
    "layered_settings",
    "parse_hostport",
    "parse_size",
]


def parse_size(value: str | int, what: str) -> int:
    """``"4GiB"``, ``"500M"`` or ``4096`` -> bytes (``K``/``M``/``G`` are binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif not str(value).isascii():
        raise ConfigError(f"{what}: {value!r} is not a size: use ASCII digits (try 4GiB)")
    else:
        try:
            size = humanfriendly.parse_size(str(value), binary=True)
        except humanfriendly.InvalidSize:
            raise ConfigError(f"{what}: {value!r} is not a size (try 4GiB or 500MiB)") from None
    if size < 0:
        raise ConfigError(f"{what}: size must not be negative")
    return int(size)


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def layered_settings(
    args: argparse.Namespace, names: list[str], config_file: str | None
) -> dict[str, Any]:
    """Merge TOML file, ``RINGCACHE_*`` environment and flags (later wins) for ``names``.

    Flags left at ``None`` (or empty lists) do not override. List-valued settings given
    in the environment are comma-separated.
    """
    merged: dict[str, Any] = {}
    if config_file:
        try:
            with Path(config_file).open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise ConfigError(f"config file {config_file}: unknown setting {unknown[0]!r}")
        merged.update(doc)
    for name in names:
        env = os.environ.get(f"RINGCACHE_{name.upper()}")
        if env is not None:
            current = getattr(args, name, None)
            merged[name] = env.split(",") if isinstance(current, list) else env
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value != []:
            merged[name] = value
    return merged


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage text is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: Settings that say how to reach etcd (``clientlib.etcd.EtcdTarget.from_settings``).
ETCD_SETTINGS = ["etcd", "etcd_ca", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file"]


def add_etcd_arguments(p: argparse.ArgumentParser, url_help: str = "(required)") -> None:
    """The flags of :data:`ETCD_SETTINGS`: every command that talks to etcd takes them.

    There is no password flag (it would show in ``ps``): the password comes from
    ``--etcd-password-file`` or ``$RINGCACHE_ETCD_PASSWORD``.
    """
    p.add_argument("--etcd", metavar="URL", help=f"etcd endpoint, http(s)://HOST:PORT {url_help}")
    p.add_argument(
        "--etcd-ca",
        dest="etcd_ca",
        metavar="PEM",
        help="CA to verify an https:// etcd with (default: system store)",
    )
    p.add_argument(
        "--etcd-cert", dest="etcd_cert", metavar="PEM", help="client certificate for etcd"
    )
    p.add_argument("--etcd-key", dest="etcd_key", metavar="PEM", help="the key of --etcd-cert")
    p.add_argument("--etcd-user", dest="etcd_user", metavar="NAME", help="etcd user name")
    p.add_argument(
        "--etcd-password-file",
        dest="etcd_password_file",
        metavar="PATH",
        help="file holding the password of --etcd-user (or set $RINGCACHE_ETCD_PASSWORD)",
    )


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every daemon shares: its config file, etcd, the cluster, logging, and CA."""
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below")
    add_etcd_arguments(p)
    p.add_argument("--cluster", metavar="NAME", help="cluster name (default: default)")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--ca",
        metavar="PEM",
        help="CA to verify cache nodes' TLS certificates with (default: system store)",
    )


def check_log_level(value: object) -> str:
    level = str(value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level: {value!r} is not a log level")
    return level
