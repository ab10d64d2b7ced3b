"""The node's check of signed requests, and its proof over the answers it signs.

The token format and the key and signature derivations are shared with clients
(:mod:`clientlib.auth`); only a node holds the cluster secret, so only a node verifies.
"""

from __future__ import annotations

import binascii
import hmac
import time

from clientlib.auth import (
    MAX_HEADER,
    MAX_SKEW,
    SCHEME,
    TOKEN_PREFIX,
    Claims,
    decode_key,
    sign_answer,
    sign_request,
    token_key,
)
from clientlib.errors import Unauthorized

__all__ = ["Verifier"]


class Verifier:
    """A node's check of signed requests against the cluster secret."""

    def __init__(self, secret: bytes, node: str = "", max_skew: float = MAX_SKEW) -> None:
        self._secret = secret
        self._node = node
        self._max_skew = max_skew

    def verify(self, method: str, path_qs: str, header: str | None, digest: str = "") -> Claims:
        """The request's claims; :class:`Unauthorized` if unsigned, forged, stale, expired
        or signed for another node."""
        if not header:
            raise Unauthorized("this cluster needs a signed request (use --token-file)")
        if len(header) > MAX_HEADER or not header.startswith(SCHEME + " "):
            raise Unauthorized("malformed Authorization header")
        parts = header[len(SCHEME) + 1 :].split(".")
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
            raise Unauthorized("malformed Authorization header")
        payload, stamp, sig = parts
        key = token_key(self._secret, payload)
        want = sign_request(key, method, path_qs, stamp, digest, self._node)
        if not sig.isascii() or not hmac.compare_digest(want, sig):
            raise Unauthorized("bad request signature (or signed for another node)")
        if abs(time.time() - int(stamp)) > self._max_skew:
            raise Unauthorized("request signed too long ago (or clocks disagree)")
        claims = Claims.from_payload(payload)
        if claims.expires and claims.expires < time.time():
            raise Unauthorized(f"token of tenant {claims.tenant!r} has expired")
        return claims

    def prove(self, header: str, digest: str) -> str:
        """This node's :data:`clientlib.auth.PROOF_HEADER` for an answer with body SHA-256
        ``digest`` to the (verified) request signed with ``header``."""
        payload, _, signature = header[len(SCHEME) + 1 :].partition(".")
        signature = signature.rpartition(".")[2]
        return sign_answer(token_key(self._secret, payload), signature, digest)

    def verify_bearer(self, header: str | None, right: str) -> Claims:
        """Claims of an unsigned ``Bearer <token>`` that must carry ``right`` (only
        ``/metrics`` takes these: Prometheus cannot sign requests)."""
        if not header or not header.startswith("Bearer ") or len(header) > MAX_HEADER:
            raise Unauthorized(f"needs a signed request or a bearer token with {right!r}")
        parts = header[7:].strip().split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise Unauthorized("malformed bearer token")
        try:
            key = decode_key(parts[2])
        except (binascii.Error, ValueError):
            raise Unauthorized("malformed bearer token") from None
        if not hmac.compare_digest(token_key(self._secret, parts[1]), key):
            raise Unauthorized("bearer token not made from this cluster's secret")
        claims = Claims.from_payload(parts[1])
        if claims.expires and claims.expires < time.time():
            raise Unauthorized(f"token of tenant {claims.tenant!r} has expired")
        claims.require_right(right)
        return claims
