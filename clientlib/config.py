"""Settings declared once: the table every command's flags, TOML keys and variables come from.

A command lists its settings as :class:`Setting` rows in a :class:`SettingsTable`. Each
row names the setting, how its value is parsed and bounded (a :class:`Kind`), its default
and help, and where it may be given: a ``--flag``, a key of the ``--config`` TOML file, a
``RINGCACHE_<NAME>`` environment variable. The table builds the argparse parser and
:meth:`SettingsTable.resolve` layers file, environment and flags (later wins), applies
defaults and validates every value once, at start: a bad value is a :class:`ConfigError`
whose message names the setting, printed as one line by the commands.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import humanfriendly

from clientlib.cluster import check_cluster_name
from clientlib.errors import ConfigError

__all__ = [
    "HOSTPORT",
    "LOG_LEVEL",
    "SWITCH",
    "TEXT",
    "Choice",
    "Kind",
    "LocalPath",
    "Number",
    "OneLineParser",
    "Parse",
    "PathSize",
    "Rate",
    "Setting",
    "SettingsTable",
    "Size",
    "Switch",
    "Text",
    "build",
    "cluster_setting",
    "etcd_settings",
    "log_level_setting",
    "node_ca_setting",
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


#: How a raw value (TOML value, variable text or flag text) becomes a setting's value;
#: the second argument names the setting in error messages (``--listen``, ``SOURCE``).
Parse = Callable[[Any, str], Any]


class Kind:
    """A type of setting with its bounds: parses and checks one raw value.

    ``arg_type`` and ``choices``, when set, are handed to argparse for the flag, so a
    flag's mistake is argparse's usage error.
    """

    arg_type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None

    def __call__(self, value: Any, what: str) -> Any:
        raise NotImplementedError


class Text(Kind):
    """A string, taken as given."""

    def __call__(self, value: Any, what: str) -> str:
        return str(value)


class Switch(Kind):
    """On or off: a flag without a value, a TOML boolean, or ``1/true/yes/on``."""

    def __call__(self, value: Any, what: str) -> bool:
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Number(Kind):
    """An ``int`` or ``float`` within ``[lo, hi]``."""

    kind: type[int] | type[float]
    lo: float
    hi: float

    @property
    def arg_type(self) -> Callable[[str], Any]:  # type: ignore[override]
        return self.kind

    @property
    def bounds(self) -> str:
        """The range, as ``--help`` shows it."""
        return " to ".join(
            str(int(n)) if float(n).is_integer() else str(n) for n in (self.lo, self.hi)
        )

    def __call__(self, value: Any, what: str) -> int | float:
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: {value!r} is not a number") from None
        if not self.lo <= number <= self.hi:
            raise ConfigError(f"{what}: {number} is outside [{self.lo}, {self.hi}]")
        return number


@dataclass(frozen=True)
class Size(Kind):
    """A byte count with units (``128MiB``); see :func:`parse_size`."""

    def __call__(self, value: Any, what: str) -> int:
        return parse_size(value, what)


@dataclass(frozen=True)
class Rate(Kind):
    """Bytes per second with units (``50MiB`` or ``50MiB/s``): 0 is no limit, else >= 1KiB."""

    def __call__(self, value: Any, what: str) -> int:
        text = value if isinstance(value, int) else str(value).strip()
        if isinstance(text, str) and text.lower().endswith("/s"):
            text = text[:-2]
        rate = parse_size(text, what)
        if 0 < rate < 1024:
            raise ConfigError(f"{what}: {value!r} is below 1KiB/s (0 means no limit)")
        return rate


@dataclass(frozen=True)
class HostPort(Kind):
    """``HOST:PORT``, as ``(host, port)``, or as the text itself with ``as_text``."""

    as_text: bool = False

    def __call__(self, value: Any, what: str) -> tuple[str, int] | str:
        address = parse_hostport(value, what)
        return str(value) if self.as_text else address


@dataclass(frozen=True)
class Choice(Kind):
    """One of ``names`` (``upper``: compared and returned in upper case)."""

    names: tuple[str, ...]
    upper: bool = False

    @property
    def choices(self) -> tuple[str, ...] | None:  # type: ignore[override]
        return None if self.upper else self.names

    def __call__(self, value: Any, what: str) -> str:
        text = str(value).upper() if self.upper else str(value)
        if text not in self.names:
            *rest, last = self.names
            allowed = f"{', '.join(rest)} or {last}" if rest else last
            raise ConfigError(f"{what}: {value!r} is not {allowed}")
        return text


@dataclass(frozen=True)
class LocalPath(Kind):
    """A path on this machine, made absolute (``resolve``: symlinks resolved too), and
    checked to be an existing ``file`` or ``dir`` if ``must`` says so."""

    must: Literal["file", "dir"] | None = None
    resolve: bool = False

    def __call__(self, value: Any, what: str) -> Path:
        path = Path(value).resolve() if self.resolve else Path(value).absolute()
        if self.must == "file" and not path.is_file():
            raise ConfigError(f"{what} {value}: no such file")
        if self.must == "dir" and not path.is_dir():
            raise ConfigError(f"{what} {value}: not a directory")
        return path


@dataclass(frozen=True)
class PathSize(Kind):
    """``PATH[:SIZE]``, a directory and the bytes it may hold: ``(absolute path, bytes)``."""

    default_size: str
    minimum: int

    def __call__(self, value: Any, what: str) -> tuple[Path, int]:
        path, sep, size = str(value).partition(":")
        if not path:
            raise ConfigError(f"{what} {value!r}: want PATH[:SIZE]")
        nbytes = parse_size(size if sep else self.default_size, f"{what} {value}")
        if nbytes < self.minimum:
            least = humanfriendly.format_size(self.minimum, binary=True).replace(" ", "")
            raise ConfigError(f"{what} {value!r}: size must be at least {least}")
        return Path(path).absolute(), nbytes


TEXT = Text()
SWITCH = Switch()
HOSTPORT = HostPort()
LOG_LEVEL = Choice(("DEBUG", "INFO", "WARNING", "ERROR"), upper=True)


@dataclass(frozen=True)
class Setting:
    """One setting of a command, declared once.

    ``default`` is in the form a user would write it (``"128MiB"``) and parsed like a
    given value; a callable is called for it at start. ``shown_default`` is what
    ``--help`` says when there is no fixed default (``"your uid"``). ``many``: repeatable
    flag, TOML list, comma-separated variable. ``positional``: an argument, not a flag.
    """

    name: str
    parse: Parse
    help: str
    default: Any = None
    shown_default: str | None = None
    metavar: str | None = None
    required: bool = False
    many: bool = False
    positional: bool = False
    flag: bool = True
    toml: bool = True
    env: bool = True

    @property
    def option(self) -> str:
        """The flag, ``--free-space-ratio``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        """The environment variable, ``RINGCACHE_FREE_SPACE_RATIO``."""
        return f"RINGCACHE_{self.name.upper()}"

    @property
    def label(self) -> str:
        """How error messages name it: the flag, or ``SOURCE`` for a positional."""
        return self.name.upper() if self.positional else self.option

    def help_text(self) -> str:
        """The ``--help`` line: the help, then the default and whether it repeats."""
        shown = self.shown_default
        if shown is None and self.default is not None and not isinstance(self.parse, Switch):
            shown = str(self.default)
        notes = [f"{self.parse.bounds}"] if isinstance(self.parse, Number) else []
        if shown:
            notes.append(f"default: {shown}")
        if self.many:
            notes.append("repeatable")
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help

    def value(self, raw: Any) -> Any:
        """The parsed value of ``raw`` (each item, for a ``many`` setting)."""
        if self.many:
            items = raw if isinstance(raw, list) else [raw]
            return [self.parse(item, self.label) for item in items]
        return self.parse(raw, self.label)


def log_level_setting() -> Setting:
    """The ``log_level`` setting every daemon has."""
    return Setting(
        "log_level", LOG_LEVEL, "DEBUG, INFO, WARNING or ERROR", default="INFO", metavar="LEVEL"
    )


def node_ca_setting() -> Setting:
    """The ``ca`` setting of a client of cache nodes (mountd, s3gate): the CA of nodes
    started with ``--tls-cert``."""
    return Setting(
        "ca",
        LocalPath(must="file"),
        "CA to verify cache nodes' TLS certificates with",
        shown_default="system store",
        metavar="PEM",
    )


def cluster_setting() -> Setting:
    """The ``cluster`` setting: which cluster's ring and config to use."""
    return Setting("cluster", _cluster_name, "cluster name", default="default", metavar="NAME")


def _cluster_name(value: Any, what: str) -> str:
    return check_cluster_name(str(value))


def etcd_settings(default: str | None = None, toml: bool = True) -> list[Setting]:
    """How to reach etcd (``clientlib.etcd.EtcdTarget.from_settings`` reads these).

    There is no password setting (a flag would show in ``ps``): the password comes from
    ``etcd_password_file`` or ``$RINGCACHE_ETCD_PASSWORD``.
    """
    return [
        Setting(
            "etcd",
            TEXT,
            "etcd endpoint, http(s)://HOST:PORT",
            default=default,
            metavar="URL",
            required=default is None,
            toml=toml,
        ),
        Setting(
            "etcd_ca",
            TEXT,
            "CA to verify an https:// etcd with",
            shown_default="system store",
            metavar="PEM",
            toml=toml,
        ),
        Setting("etcd_cert", TEXT, "client certificate for etcd", metavar="PEM", toml=toml),
        Setting("etcd_key", TEXT, "the key of --etcd-cert", metavar="PEM", toml=toml),
        Setting("etcd_user", TEXT, "etcd user name", metavar="NAME", toml=toml),
        Setting(
            "etcd_password_file",
            TEXT,
            "file holding the password of --etcd-user (or set $RINGCACHE_ETCD_PASSWORD)",
            metavar="PATH",
            toml=toml,
        ),
    ]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage text is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class SettingsTable:
    """A command's settings: its argparse parser, and their layering and validation.

    ``synopsis`` (``"mountd SOURCE MOUNTPOINT"``) completes the message of a missing
    positional setting. ``config_file``: the command takes ``--config FILE``, whose keys
    are the settings declared ``toml``.
    """

    def __init__(
        self,
        prog: str,
        description: str,
        settings: Iterable[Setting],
        synopsis: str = "",
        config_file: bool = True,
    ) -> None:
        self.prog = prog
        self.description = description
        self.settings = tuple(settings)
        self.synopsis = synopsis
        self.config_file = config_file
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"{prog}: a setting is declared twice")

    @property
    def toml_keys(self) -> list[str]:
        """The keys a ``--config`` file may hold."""
        return [s.name for s in self.settings if s.toml] if self.config_file else []

    def epilog(self) -> str:
        """What --help says, after the flags, about where else settings come from."""
        layers: list[str] = []
        if self.toml_keys:
            layers.append("a key of the --config file (same name, _ for -)")
        if any(s.env for s in self.settings):
            layers.append("an environment variable RINGCACHE_<NAME>")
        if not layers:
            return ""
        order = "flags win over the environment"
        if self.toml_keys:
            order += ", which wins over the file"
        return f"Each setting above is also {' and '.join(layers)}; {order}."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The flags (and positionals) of the table's settings, all defaulting to unset."""
        if self.toml_keys:
            parser.add_argument(
                "--config", metavar="FILE", help="TOML file with any of the settings below"
            )
        for s in self.settings:
            if s.positional:
                parser.add_argument(s.name, nargs="?", metavar=s.metavar, help=s.help_text())
                continue
            if not s.flag:
                continue
            extra: dict[str, Any] = {}
            if isinstance(s.parse, Switch):
                extra = {"action": "store_const", "const": True}
            else:
                extra["metavar"] = s.metavar
                if s.many:
                    extra["action"] = "append"
                if getattr(s.parse, "arg_type", None) is not None:
                    extra["type"] = s.parse.arg_type  # type: ignore[attr-defined]
                if getattr(s.parse, "choices", None) is not None:
                    extra["choices"] = s.parse.choices  # type: ignore[attr-defined]
                    extra.pop("metavar")
            parser.add_argument(s.option, dest=s.name, help=s.help_text(), **extra)

    def parser(self) -> OneLineParser:
        """The command's parser: every flag of the table (and ``--config`` if any TOML)."""
        parser = OneLineParser(prog=self.prog, description=self.description, epilog=self.epilog())
        self.add_arguments(parser)
        return parser

    def _given(self, args: argparse.Namespace) -> dict[str, Any]:
        """What the file, the environment and the flags say (later wins); empties unset."""
        merged: dict[str, Any] = {}
        config_file = getattr(args, "config", None) if self.config_file else None
        if config_file:
            merged.update(_read_toml(config_file, self.toml_keys))
        for s in self.settings:
            env = os.environ.get(s.env_var) if s.env else None
            if env is not None:
                merged[s.name] = env.split(",") if s.many else env
        for s in self.settings:
            flag = getattr(args, s.name, None) if s.flag or s.positional else None
            if flag is not None:
                merged[s.name] = flag
        return {k: v for k, v in merged.items() if v not in ("", [], None)}

    def resolve(self, args: argparse.Namespace) -> dict[str, Any]:
        """Every setting's validated value (``None``, or ``[]`` if ``many``, when unset)."""
        given = self._given(args)
        for s in self.settings:
            if s.required and s.name not in given:
                raise ConfigError(self._missing(s))
        values: dict[str, Any] = {}
        for s in self.settings:
            raw = given.get(s.name, s.default() if callable(s.default) else s.default)
            values[s.name] = s.value(raw) if raw is not None else ([] if s.many else None)
        return values

    def _missing(self, s: Setting) -> str:
        if s.positional:
            return f"{s.label} is required" + (f": {self.synopsis}" if self.synopsis else "")
        if s.many:
            return f"at least one {s.option} {s.metavar or ''} is required".replace("  ", " ")
        return f"{s.option} is required"


def _read_toml(path: str, keys: Sequence[str]) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    return doc


T = TypeVar("T")


def build(cls: type[T], values: Mapping[str, Any], **overrides: Any) -> T:
    """The dataclass ``cls`` from resolved ``values``: each field takes the setting of
    its name, unless ``overrides`` gives it (fields named unlike any setting)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: overrides[n] if n in overrides else values[n] for n in names})
