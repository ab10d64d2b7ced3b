"""Tokens and signed requests: block access is authenticated and scoped.

A cluster started with ``--token-file`` holds a shared *secret*. ``cachectl token create``
derives a *token* from it: a payload (URL-prefix scopes, tenant, expiry) and the key
``HMAC-SHA256(secret, payload)``. A client never sends its key: it signs each request with
``Authorization: Ringcache <payload>.<unix time>.<signature>``, the signature being
``HMAC(key, method \\n path?query \\n time \\n body digest)``.

A node, which knows the secret, re-derives the key from the payload and checks the
signature, the clock (``MAX_SKEW`` seconds, so a captured request cannot be replayed
later), the expiry, and that the scope covers the object the request names. The secret
itself, given as a token file, is an all-access token (scope ``""``) for operators and
node-to-node requests. POST bodies are covered by their SHA-256; PUT bodies are not (the
scope check uses the URL, and a block's bytes are bound to its id by the source
parameters), which avoids hashing 4 MiB twice per fill.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path

from clientlib.errors import ConfigError, Forbidden, Unauthorized
from clientlib.urls import split_url

__all__ = [
    "ALL_ACCESS",
    "MAX_SKEW",
    "Claims",
    "Credentials",
    "Verifier",
    "body_digest",
    "create_token",
    "load_secret",
]

TOKEN_PREFIX = "rc1"
SCHEME = "Ringcache"
MAX_SKEW = 60
MIN_SECRET_BYTES = 16
MAX_HEADER = 4096


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Claims:
    """What a token allows: URL prefixes, the tenant it belongs to, and until when."""

    scope: tuple[str, ...]
    tenant: str
    expires: float = 0.0

    @property
    def all_access(self) -> bool:
        return "" in self.scope

    def covers(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.scope)

    def require(self, url: str) -> None:
        if not self.covers(url):
            raise Forbidden(f"token of tenant {self.tenant!r} does not cover {url[:200]}")

    def require_all_access(self, what: str) -> None:
        if not self.all_access:
            raise Forbidden(f"{what} needs an all-access (operator) token")

    def payload(self) -> str:
        doc = {"scope": list(self.scope), "tenant": self.tenant, "exp": self.expires}
        return _b64(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())

    @classmethod
    def from_payload(cls, payload: str) -> Claims:
        try:
            doc = json.loads(_unb64(payload))
            scope = tuple(str(s) for s in doc["scope"])
            return cls(scope, str(doc["tenant"]), float(doc["exp"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Unauthorized("malformed token payload") from None


ALL_ACCESS = Claims(("",), "operator", 0.0)


def load_secret(path: str | Path) -> bytes:
    """The cluster secret from a file (whitespace around it ignored)."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"token file {path}: {exc.strerror}") from None
    if secret.startswith(TOKEN_PREFIX.encode() + b"."):
        raise ConfigError(f"{path} holds a scoped token, not the cluster secret")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"cluster secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def create_token(secret: bytes, scopes: list[str], tenant: str, ttl: float | None = None) -> str:
    """A token for ``scopes`` (URL prefixes) valid for ``ttl`` seconds (forever if None)."""
    for scope in scopes:
        split_url(scope)
    if not tenant or len(tenant) > 64:
        raise ConfigError("--tenant must be 1 to 64 characters")
    claims = Claims(tuple(scopes), tenant, time.time() + ttl if ttl else 0.0)
    payload = claims.payload()
    return f"{TOKEN_PREFIX}.{payload}.{_b64(_mac(secret, payload))}"


class Credentials:
    """A client's signing key and claims, from its ``--token-file`` (or none at all)."""

    def __init__(self, payload: str | None = None, key: bytes = b"") -> None:
        self._payload = payload
        self._key = key

    @classmethod
    def from_file(cls, path: str | Path | None) -> Credentials:
        if path is None:
            return cls()
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"token file {path}: {exc.strerror}") from None
        if text.startswith(TOKEN_PREFIX + "."):
            parts = text.split(".")
            if len(parts) != 3:
                raise ConfigError(f"token file {path}: malformed token")
            try:
                return cls(parts[1], _unb64(parts[2]))
            except binascii.Error:
                raise ConfigError(f"token file {path}: malformed token") from None
        return cls.for_secret(load_secret(path))

    @classmethod
    def for_secret(cls, secret: bytes) -> Credentials:
        """All-access credentials of whoever holds the cluster secret (nodes, operators)."""
        payload = ALL_ACCESS.payload()
        return cls(payload, _mac(secret, payload))

    def headers(self, method: str, path_qs: str, digest: str = "") -> dict[str, str]:
        """The Authorization header for one request (empty without a token)."""
        if self._payload is None:
            return {}
        now = str(int(time.time()))
        sig = _b64(_mac(self._key, f"{method}\n{path_qs}\n{now}\n{digest}"))
        return {"Authorization": f"{SCHEME} {self._payload}.{now}.{sig}"}


class Verifier:
    """A node's check of signed requests against the cluster secret."""

    def __init__(self, secret: bytes, max_skew: float = MAX_SKEW) -> None:
        self._secret = secret
        self._max_skew = max_skew

    def verify(self, method: str, path_qs: str, header: str | None, digest: str = "") -> Claims:
        """The request's claims; :class:`Unauthorized` if unsigned, forged, stale or expired."""
        if not header:
            raise Unauthorized("this cluster needs a signed request (use --token-file)")
        if len(header) > MAX_HEADER or not header.startswith(SCHEME + " "):
            raise Unauthorized("malformed Authorization header")
        parts = header[len(SCHEME) + 1 :].split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            raise Unauthorized("malformed Authorization header")
        payload, stamp, sig = parts
        key = _mac(self._secret, payload)
        want = _b64(_mac(key, f"{method}\n{path_qs}\n{stamp}\n{digest}"))
        if not sig.isascii() or not hmac.compare_digest(want, sig):
            raise Unauthorized("bad request signature")
        if abs(time.time() - int(stamp)) > self._max_skew:
            raise Unauthorized("request signed too long ago (or clocks disagree)")
        claims = Claims.from_payload(payload)
        if claims.expires and claims.expires < time.time():
            raise Unauthorized(f"token of tenant {claims.tenant!r} has expired")
        return claims
