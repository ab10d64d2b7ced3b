"""Tokens and signed requests: block access is authenticated, scoped and has rights.

A cluster started with ``--token-file`` holds a shared *secret*. ``cachectl token create``
derives a *token* from it: a payload (URL-prefix scopes, tenant, rights, expiry) and the
key ``HMAC-SHA256(secret, payload)``. A client never sends its key: it signs each request
with ``Authorization: Ringcache <payload>.<unix time>.<signature>``, the signature being
``HMAC(key, method \n path?query \n time \n body digest \n node id)``.

What a signature binds, and why:

- the *body digest* (SHA-256, hex): a captured request cannot be replayed with another
  body. POST bodies are hashed by the node as read; a PUT (a fill) declares its digest in
  ``X-Ringcache-Content-SHA256`` so the signature is checked before the body is read, and
  the node then checks the body against it;
- the *node id* it is sent to: a request a rogue node collects cannot be replayed at a
  real node;
- the *time* (``MAX_SKEW`` seconds): a captured request cannot be replayed later.

A node, which knows the secret, re-derives the key from the payload and checks all of
that, the expiry, and that the scope covers the object the request names with the right
it needs. A scope covers whole path segments of the canonical URL
(:func:`clientlib.urls.canonical_url`): ``s3://b/team`` covers ``s3://b/team/x`` but never
``s3://b/team-other/x``. Rights are ``read`` (the default), ``write`` (filling the cache
with a client's bytes) and ``metrics`` (scraping ``/metrics``, whose labels name
tenants). The secret itself is an all-access token (scope ``""``, every right) for
operators and for nodes talking to each other.

A node answering a signed request can prove that it knows the secret too
(:func:`sign_answer`, :meth:`Credentials.check_proof`): nodes insist on that before
they store a block another node handed them, so a record in etcd that points at a rogue
server never gets its bytes into the cache.

This module holds the format and the derivations both sides compute; the node's check of
a request (:class:`cachenode.verifier.Verifier`) lives with the node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from clientlib.errors import ConfigError, Forbidden, Unauthorized
from clientlib.urls import canonical_url

__all__ = [
    "ALL_ACCESS",
    "DIGEST_HEADER",
    "MAX_HEADER",
    "MAX_SKEW",
    "METRICS",
    "PROOF_HEADER",
    "READ",
    "RIGHTS",
    "SCHEME",
    "TOKEN_PREFIX",
    "WRITE",
    "Claims",
    "Credentials",
    "body_digest",
    "check_digest",
    "create_token",
    "decode_key",
    "load_secret",
    "scope_covers",
    "sign_answer",
    "sign_request",
    "token_key",
]

TOKEN_PREFIX = "rc1"
SCHEME = "Ringcache"
MAX_SKEW = 60
MIN_SECRET_BYTES = 16
MAX_HEADER = 4096
#: The SHA-256 (hex) a PUT declares for its body; its signature covers it.
DIGEST_HEADER = "X-Ringcache-Content-SHA256"
#: A node's proof that it knows the cluster secret, on an answer to a signed request.
PROOF_HEADER = "X-Ringcache-Proof"

READ = "read"
WRITE = "write"
METRICS = "metrics"
RIGHTS = frozenset({READ, WRITE, METRICS})

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def body_digest(body: bytes | bytearray | memoryview) -> str:
    """The SHA-256 of a body, as signatures carry it ("" is an empty or absent body)."""
    digest = hashlib.sha256(body).hexdigest()
    return "" if digest == _EMPTY_DIGEST else digest


def check_digest(value: str | None) -> str:
    """A declared body digest (:data:`DIGEST_HEADER`): 64 lowercase hex digits."""
    if value is None or not _DIGEST_RE.fullmatch(value):
        raise Unauthorized(f"{DIGEST_HEADER} must be the body's SHA-256 in lowercase hex")
    return value


def scope_covers(scope: str, url: str) -> bool:
    """Whether the scope prefix ``scope`` covers the canonical URL ``url``.

    Scopes end at path segments: ``s3://b/team`` covers ``s3://b/team`` and everything
    under ``s3://b/team/``, never ``s3://b/team-other``; ``""`` covers everything.
    """
    if not scope or url == scope:
        return True
    return url.startswith(scope if scope.endswith("/") else scope + "/")


@dataclass(frozen=True)
class Claims:
    """What a token allows: URL prefixes, the tenant it belongs to, its rights, until when."""

    scope: tuple[str, ...]
    tenant: str
    expires: float = 0.0
    rights: frozenset[str] = frozenset({READ})

    @property
    def all_access(self) -> bool:
        return "" in self.scope and self.rights == RIGHTS

    def covers(self, url: str, right: str = READ) -> bool:
        """Whether the token may do ``right`` on ``url`` (canonicalised here first)."""
        if right not in self.rights:
            return False
        canonical = canonical_url(url)
        return any(scope_covers(prefix, canonical) for prefix in self.scope)

    def require(self, url: str, right: str = READ) -> None:
        if right not in self.rights:
            raise Forbidden(f"token of tenant {self.tenant!r} lacks the {right!r} right")
        if not self.covers(url, right):
            raise Forbidden(f"token of tenant {self.tenant!r} does not cover {url[:200]}")

    def require_right(self, right: str) -> None:
        if right not in self.rights:
            raise Forbidden(f"token of tenant {self.tenant!r} lacks the {right!r} right")

    def require_all_access(self, what: str) -> None:
        if not self.all_access:
            raise Forbidden(f"{what} needs an all-access (operator) token")

    def payload(self) -> str:
        doc = {
            "scope": list(self.scope),
            "tenant": self.tenant,
            "exp": self.expires,
            "rights": sorted(self.rights),
        }
        return _b64(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())

    @classmethod
    def from_payload(cls, payload: str) -> Claims:
        """Parse a payload; one made before rights existed is read-only."""
        try:
            doc = json.loads(_unb64(payload))
            scope = tuple(str(s) for s in doc["scope"])
            rights = frozenset(str(r) for r in doc.get("rights", [READ]))
            claims = cls(scope, str(doc["tenant"]), float(doc["exp"]), rights)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise Unauthorized("malformed token payload") from None
        if not rights <= RIGHTS:
            raise Unauthorized(f"token with unknown rights {sorted(rights - RIGHTS)}")
        return claims


ALL_ACCESS = Claims(("",), "operator", 0.0, RIGHTS)


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


def create_token(
    secret: bytes,
    scopes: list[str],
    tenant: str,
    ttl: float | None = None,
    rights: frozenset[str] = frozenset({READ}),
) -> str:
    """A token for ``scopes`` (URL prefixes, canonicalised) with ``rights``, valid for
    ``ttl`` seconds (forever if None)."""
    canonical = tuple(canonical_url(scope) for scope in scopes)
    if "" in scopes:
        raise ConfigError("a scope must be a URL prefix; the cluster secret is all-access")
    if not tenant or len(tenant) > 64 or not tenant.isascii() or not tenant.isprintable():
        raise ConfigError("--tenant must be 1 to 64 printable ASCII characters")
    if not rights or not rights <= RIGHTS:
        raise ConfigError(f"rights must be some of {sorted(RIGHTS)}")
    if not scopes and rights & {READ, WRITE}:
        raise ConfigError("a token that reads or writes needs at least one scope")
    claims = Claims(canonical, tenant, time.time() + ttl if ttl else 0.0, frozenset(rights))
    payload = claims.payload()
    return f"{TOKEN_PREFIX}.{payload}.{_b64(token_key(secret, payload))}"


def token_key(secret: bytes, payload: str) -> bytes:
    """The signing key of the token with ``payload``, derived from the cluster secret."""
    return _mac(secret, payload)


def decode_key(text: str) -> bytes:
    """A key as a token carries it (unpadded URL-safe base64)."""
    return _unb64(text)


def sign_request(key: bytes, method: str, path_qs: str, stamp: str, digest: str, node: str) -> str:
    """The signature of one request (method, path and query, unix time, body digest and
    the node it is sent to) with a token's ``key``."""
    return _b64(_mac(key, f"{method}\n{path_qs}\n{stamp}\n{digest}\n{node}"))


def sign_answer(key: bytes, signature: str, digest: str) -> str:
    """A node's :data:`PROOF_HEADER`: over the request's ``signature`` and the answer's
    body digest, with the key of the token that signed the request."""
    return _b64(_mac(key, f"answer\n{signature}\n{digest}"))


class Credentials:
    """A client's signing key and claims, from its ``--token-file`` (or none at all)."""

    def __init__(self, payload: str | None = None, key: bytes = b"") -> None:
        self._payload = payload
        self._key = key
        self.claims = ALL_ACCESS if payload is None else Claims.from_payload(payload)

    @classmethod
    def from_file(cls, path: str | Path | None) -> Credentials:
        if path is None:
            return cls()
        try:
            text = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"token file {path}: {getattr(exc, 'strerror', exc)}") from None
        if text.startswith(TOKEN_PREFIX + "."):
            return cls.from_token(text, what=f"token file {path}")
        return cls.for_secret(load_secret(path))

    @classmethod
    def from_token(cls, text: str, what: str = "token") -> Credentials:
        """The credentials of a token as ``cachectl token create`` prints it; ``what``
        names where it came from in the error."""
        parts = text.strip().split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise ConfigError(f"{what}: malformed token")
        try:
            return cls(parts[1], _unb64(parts[2]))
        except (binascii.Error, Unauthorized):
            raise ConfigError(f"{what}: malformed token") from None

    @classmethod
    def for_secret(cls, secret: bytes) -> Credentials:
        """All-access credentials of whoever holds the cluster secret (nodes, operators)."""
        payload = ALL_ACCESS.payload()
        return cls(payload, token_key(secret, payload))

    @property
    def signing(self) -> bool:
        """Whether requests are signed (a token file was given)."""
        return self._payload is not None

    def may(self, right: str, url: str) -> bool:
        """Whether the token covers ``url`` with ``right`` (always, without a token)."""
        return self._payload is None or self.claims.covers(url, right)

    def headers(
        self, method: str, path_qs: str, digest: str = "", node: str = ""
    ) -> dict[str, str]:
        """The Authorization header for one request to ``node`` (empty without a token)."""
        if self._payload is None:
            return {}
        now = str(int(time.time()))
        sig = sign_request(self._key, method, path_qs, now, digest, node)
        return {"Authorization": f"{SCHEME} {self._payload}.{now}.{sig}"}

    def check_proof(self, request_headers: dict[str, str], digest: str, proof: str | None) -> bool:
        """Whether ``proof`` (a node's :data:`PROOF_HEADER`) shows that the node which
        answered the request signed with ``request_headers`` knows the cluster secret and
        sent a body whose SHA-256 is ``digest``."""
        header = request_headers.get("Authorization")
        if self._payload is None or header is None or not proof or not proof.isascii():
            return False
        signature = header.rpartition(".")[2]
        want = sign_answer(self._key, signature, digest)
        return hmac.compare_digest(want, proof)

    def bearer(self) -> str:
        """The token itself, for the one place that takes it unsigned: a Prometheus
        scrape of ``/metrics`` (with a ``metrics``-only token, it grants nothing else)."""
        if self._payload is None:
            return ""
        return f"{TOKEN_PREFIX}.{self._payload}.{_b64(self._key)}"
