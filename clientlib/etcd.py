"""Connecting to etcd the same way everywhere: one target, bounded calls, fast reconnects.

:class:`EtcdTarget` is where and how to reach etcd: the URL, and for a secured etcd the
CA, client certificate and user/password. It is built and validated once from a
command's settings (:meth:`EtcdTarget.from_settings`) and passed to everything that talks
to etcd, so nodes, mounts, cachectl and the Python API connect alike.

Every call times out (a dead etcd must never hang a node or a client), and gRPC's
reconnect backoff is capped at one second: its default grows to two minutes, which would
leave nodes and clients disconnected long after etcd is back.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# gRPC's C core logs failed TLS handshakes to stderr; errors reach users as one line
# (etcd_error). GRPC_VERBOSITY=ERROR in the environment shows them again.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import aetcd
import grpc
from aetcd import rpc
from aetcd.client import _handle_errors

from clientlib.errors import ConfigError

__all__ = ["ETCD_ERRORS", "EtcdTarget", "connect", "etcd_error", "forget_token", "misconfigured"]

#: What an etcd call raises when etcd is down, slow or restarting, or refuses us.
ETCD_ERRORS = (aetcd.ClientError, OSError, asyncio.TimeoutError)

#: Where the password of ``--etcd-user`` comes from when there is no password file.
PASSWORD_ENV = "RINGCACHE_ETCD_PASSWORD"

_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.use_local_subchannel_pool": 1,
    "grpc.keepalive_time_ms": 10000,
    "grpc.keepalive_timeout_ms": 5000,
}


def _pem(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag} {path}: not a PEM file")
    return data


def _system_roots() -> bytes | None:
    """The system's trusted CAs (gRPC otherwise trusts only the roots it ships with)."""
    paths = ssl.get_default_verify_paths()
    for name in (paths.cafile, paths.openssl_cafile):
        if name and os.path.isfile(name):
            return Path(name).read_bytes()
    return None


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """How to reach the cluster's etcd: ``http(s)://HOST:PORT`` and its credentials.

    Validated on construction: a bad URL, TLS files with an ``http://`` URL, a
    certificate without its key, an unreadable file or a user without a password is a
    one-line :class:`ConfigError`. ``https://`` without ``ca`` trusts the system store.
    """

    url: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str = field(init=False, repr=False, compare=False)
    port: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        url = self.url
        parts = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = parts.port or 2379
        except ValueError as exc:
            raise ConfigError(f"bad etcd URL {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad etcd URL {url!r}: want http(s)://HOST:PORT")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ConfigError(f"bad etcd URL {url!r}: want http(s)://HOST:PORT")
        object.__setattr__(self, "host", parts.hostname)
        object.__setattr__(self, "port", port)
        tls_files = [f for f, v in (("ca", self.ca), ("cert", self.cert), ("key", self.key)) if v]
        if tls_files and parts.scheme != "https":
            raise ConfigError(f"--etcd-{tls_files[0]} needs an https:// --etcd URL, not {url}")
        if bool(self.cert) != bool(self.key):
            raise ConfigError("--etcd-cert and --etcd-key go together")
        if self.user and not self.password:
            raise ConfigError(
                f"--etcd-user {self.user} needs a password: --etcd-password-file or {PASSWORD_ENV}"
            )
        if self.password and not self.user:
            raise ConfigError("an etcd password was given without --etcd-user")
        for flag, path in (("--etcd-ca", self.ca), ("--etcd-cert", self.cert)):
            if path is not None:
                _pem(path, flag)
        if self.key is not None:
            _pem(self.key, "--etcd-key")

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @classmethod
    def of(cls, value: EtcdTarget | str) -> EtcdTarget:
        """``value`` itself, or a plain URL (``CacheClient(etcd="http://...")``) as a target."""
        return value if isinstance(value, EtcdTarget) else cls(str(value))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EtcdTarget:
        """The target described by the ``etcd*`` settings (see ``clientlib.config``).

        The password is read from ``etcd_password_file``, else from ``$RINGCACHE_ETCD_PASSWORD``;
        it is never a flag, so it does not show in ``ps``.
        """
        if not settings.get("etcd"):
            raise ConfigError("--etcd is required")
        password = None
        if settings.get("etcd_password_file"):
            path = Path(settings["etcd_password_file"])
            try:
                password = path.read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise ConfigError(f"--etcd-password-file {path}: {reason}") from None
            if not password:
                raise ConfigError(f"--etcd-password-file {path}: the file is empty")
        elif settings.get("etcd_user"):
            password = os.environ.get(PASSWORD_ENV) or None

        def path(name: str) -> Path | None:
            return Path(settings[name]).absolute() if settings.get(name) else None

        return cls(
            url=str(settings["etcd"]),
            ca=path("etcd_ca"),
            cert=path("etcd_cert"),
            key=path("etcd_key"),
            user=settings.get("etcd_user") or None,
            password=password,
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """gRPC TLS credentials for an ``https://`` target, else ``None``."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "--etcd-ca") if self.ca else _system_roots(),
            private_key=_pem(self.key, "--etcd-key") if self.key else None,
            certificate_chain=_pem(self.cert, "--etcd-cert") if self.cert else None,
        )


class _Client(aetcd.Client):
    """aetcd's client over a TLS channel when the target is ``https://``.

    aetcd 1.0 only opens plaintext channels; this is its ``connect`` with the channel made
    from the target's credentials. Everything else (authentication, stubs, watcher) is as
    aetcd does it.
    """

    def __init__(self, target: EtcdTarget, timeout: float) -> None:
        super().__init__(
            host=target.host,
            port=target.port,
            username=target.user,
            password=target.password,
            timeout=timeout,  # type: ignore[arg-type]
            options=dict(_CHANNEL_OPTIONS),
        )
        self._credentials = target.credentials()

    @_handle_errors
    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            self.channel = (
                rpc.secure_channel(target, self._credentials, options=options)
                if self._credentials is not None
                else rpc.insecure_channel(target, options=options)
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        except BaseException:
            if self.channel is not None:
                await self.channel.close()
            self._init_channel_attrs()
            raise
        finally:
            self._is_connecting = False


def connect(target: EtcdTarget | str, timeout: float = 3.0) -> aetcd.Client:
    """An (unconnected) aetcd client for ``target``; connects on first call."""
    return _Client(EtcdTarget.of(target), timeout)


def _refused(exc: BaseException) -> bool:
    """Whether etcd answered ``exc`` to say no: credentials, permissions, a dead token."""
    text = str(exc).lower()
    return isinstance(exc, aetcd.exceptions.UnauthenticatedError) or any(
        s in text
        for s in ("authentication failed", "user name is empty", "permission denied", "auth token")
    )


def _tls_failed(exc: BaseException) -> bool:
    """A handshake failure, or (TLS 1.3) the server's alert right after one: ``TSI_...``."""
    text = str(exc).lower()
    return "handshake" in text or "tsi_" in text


def misconfigured(exc: BaseException) -> bool:
    """Whether ``exc`` says etcd is there but will not talk to us as configured (refused
    credentials, a certificate not trusted): unlike an outage, waiting will not help."""
    return _refused(exc) or _tls_failed(exc)


def etcd_error(target: EtcdTarget | str, exc: BaseException) -> ConfigError:
    """One line saying why etcd at ``target`` failed us: refused, TLS, or unreachable."""
    url = EtcdTarget.of(target).url
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if _refused(exc):
        return ConfigError(
            f"etcd at {url} refused us ({detail}): check --etcd-user and its password, "
            "and that its role may read and write /ringcache/"
        )
    if _tls_failed(exc):
        # gRPC's text is long; its end (after OpenSSL's error code) is what says why.
        detail = detail.removesuffix(": OK")
        reason = detail.rpartition(": ")[2]
        if "OPENSSL_internal:" in detail:
            reason = detail.rpartition("OPENSSL_internal:")[2]
        return ConfigError(
            f"etcd at {url}: TLS failed ({reason}): check --etcd-ca, and --etcd-cert/--etcd-key "
            "if etcd asks for a client certificate"
        )
    return ConfigError(f"etcd at {url} is unreachable: {detail}")


async def forget_token(client: aetcd.Client, exc: BaseException) -> None:
    """After an auth error, drop the connection so the next call authenticates again.

    etcd forgets its tokens when it restarts (and after ``--auth-token-ttl`` unused); a
    long-lived client would otherwise keep sending a dead token.
    """
    if _refused(exc):
        await client.close()
