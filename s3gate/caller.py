"""Who a request comes from and where its bucket lives: what every handler is given.

A :class:`Caller` is the signer (an access key, or anonymous) with the ringcache claims
its requests run with and the :class:`CacheClient` that signs its block reads. A
:class:`Target` is the object (or prefix) a request names, as the canonical URL that
scope checks, block ids and origins all use.
"""

from __future__ import annotations

from dataclasses import dataclass

from clientlib import CacheClient
from clientlib.auth import READ, Claims
from clientlib.errors import BadRequest
from clientlib.urls import BUCKET_RE, canonical_url
from s3gate.errors import S3Error
from s3gate.sigv4 import Signed

__all__ = ["Buckets", "Caller", "Target"]


@dataclass(frozen=True)
class Caller:
    """The signer of a request (``signed`` is ``None`` when anonymous)."""

    name: str
    claims: Claims
    client: CacheClient
    signed: Signed | None

    def require(self, target: Target, right: str = READ) -> None:
        """``AccessDenied`` unless the caller's token covers ``target`` with ``right`` (the
        message names the bucket and key, never where a ``--bucket`` directory is)."""
        if not self.claims.covers(target.url, right):
            raise S3Error("AccessDenied", f"{self.name} may not {right} {target.name[:200]}")

    def may_see(self, url: str) -> bool:
        """Whether ``url`` (a prefix) is covered, or leads to something covered: what a
        listing may show (a scope ``s3://b/team/x`` makes ``s3://b/team/`` visible)."""
        if self.claims.covers(url):
            return True
        return READ in self.claims.rights and any(
            scope.startswith(url) for scope in self.claims.scope
        )


@dataclass(frozen=True)
class Target:
    """The bucket and key a request names, and where that is in the origin."""

    bucket: str
    key: str
    #: The bucket's URL in the origin: ``s3://bucket`` or ``file:///dir``.
    base: str

    @property
    def name(self) -> str:
        """``bucket/key`` as the caller named it (what error messages show)."""
        return f"{self.bucket}/{self.key}"

    @property
    def url(self) -> str:
        """The canonical URL of the key (a prefix for listings)."""
        return canonical_url(f"{self.base}/{self.key}") if self.key else self.base + "/"

    def key_url(self, key: str) -> str:
        """The URL of another key of the same bucket."""
        return f"{self.base}/{key}"

    def key_of(self, url: str) -> str:
        """The key of a URL under this bucket's base."""
        return url[len(self.base) + 1 :]


class Buckets:
    """Where each bucket lives: a ``--bucket`` directory, or the S3 bucket of its name."""

    def __init__(self, local: dict[str, str]) -> None:
        self._local = local

    @property
    def local(self) -> dict[str, str]:
        return dict(self._local)

    def target(self, bucket: str, key: str) -> Target:
        """The :class:`Target` of ``bucket``/``key``; ``InvalidBucketName`` or
        ``InvalidArgument`` for names the origin must never see."""
        if not BUCKET_RE.fullmatch(bucket):
            raise S3Error("InvalidBucketName", f"{bucket[:70]!r} is not a valid bucket name")
        if any(part in (".", "..") for part in key.split("/")) or "\0" in key:
            raise S3Error("InvalidArgument", "keys with '.' or '..' segments are not served")
        if len(key.encode()) > 1024:
            raise S3Error("InvalidArgument", "keys are at most 1024 bytes")
        base = self._local.get(bucket, f"s3://{bucket}")
        target = Target(bucket, key, base)
        try:
            canonical_url(target.url)
        except BadRequest as exc:
            raise S3Error("InvalidArgument", str(exc)) from None
        return target
