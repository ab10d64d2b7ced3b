"""Parsing and validating the object URLs users hand to ringcache.

``s3://bucket/key`` splits into origin ``s3://bucket`` and key ``key``; ``file:///dir/f``
into origin ``file://`` and key ``/dir/f`` (normalised, so ``/a/../b`` and ``/b`` are one
object and one set of block ids). Everything else is a :class:`BadRequest` with a message
a user can act on.

Security rests on one spelling per object: token scopes are checked against
:func:`canonical_url`, the same string block ids are made of and origins open, so no
spelling reaches another object than the one its scope check saw. Hence:

- ``file://`` paths are normalised (``.``, ``..``, ``//``) and are *not* percent-decoded:
  ``%2e%2e`` is a file of that name, never ``..`` (no layer decodes it later);
- S3 keys are taken as they are, except that ``.`` and ``..`` segments are refused: S3
  stores them literally, but HTTP stacks on the way (and some S3 servers) resolve them,
  so ``s3://b/team/../other`` could reach ``other`` past a scope on ``team``.
"""

from __future__ import annotations

import posixpath
import re

from clientlib.errors import BadRequest

__all__ = ["canonical_url", "join_url", "split_url"]

BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_KEY_BYTES = 1024


def split_url(url: str) -> tuple[str, str]:
    """Return ``(origin, key)`` of an ``s3://`` or ``file://`` URL (key may be a prefix)."""
    if "\0" in url:
        raise BadRequest("URL contains a NUL byte")
    if url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
        if not BUCKET_RE.fullmatch(bucket):
            raise BadRequest(f"bad S3 bucket name in {url[:200]!r}")
        if len(key.encode()) > MAX_KEY_BYTES:
            raise BadRequest(f"S3 key longer than {MAX_KEY_BYTES} bytes")
        if any(segment in (".", "..") for segment in key.split("/")):
            raise BadRequest(f"S3 key with a '.' or '..' segment: {url[:200]!r}")
        return f"s3://{bucket}", key
    if url.startswith("file://"):
        path = url[7:]
        if not path.startswith("/"):
            raise BadRequest(f"file URL {url[:200]!r} must be absolute: file:///dir/file")
        normal = posixpath.normpath(path)
        if normal.startswith("//"):
            normal = "/" + normal.lstrip("/")
        if path.endswith("/") and normal != "/":
            normal += "/"
        return "file://", normal
    raise BadRequest(f"unsupported URL {url[:200]!r}: use s3://bucket/key or file:///path")


def join_url(origin: str, key: str) -> str:
    """Inverse of :func:`split_url`."""
    if origin == "file://":
        return origin + key
    return f"{origin}/{key}"


def canonical_url(url: str) -> str:
    """The one spelling of ``url`` that scopes, block ids and origins all use."""
    return join_url(*split_url(url))
