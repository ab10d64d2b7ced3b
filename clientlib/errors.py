"""The one exception family of ringcache.

Every error the project raises on purpose derives from :class:`RingcacheError`; the edges
turn it into an HTTP status (cachenode), an errno (mountd) or a one-line message (CLIs).
"""

from __future__ import annotations

import errno

__all__ = [
    "BadRequest",
    "ConfigError",
    "Forbidden",
    "NotFound",
    "OriginError",
    "RingcacheError",
    "Unauthorized",
    "VersionMismatch",
]


class RingcacheError(Exception):
    """Base of all of ringcache's own errors."""

    http_status = 500
    errno = errno.EIO


class ConfigError(RingcacheError):
    """A configuration value, flag or config file is invalid."""

    http_status = 400
    errno = errno.EINVAL


class BadRequest(RingcacheError):
    """A request, URL or block id is malformed."""

    http_status = 400
    errno = errno.EINVAL


class RangeNotSatisfiable(BadRequest):
    """A ``Range`` that is malformed, asks for several parts, or lies outside the block."""

    http_status = 416


class Unauthorized(RingcacheError):
    """The request is not signed with a valid, unexpired token."""

    http_status = 401
    errno = errno.EACCES


class Forbidden(RingcacheError):
    """The request is well formed but not allowed (outside an allowed root or scope)."""

    http_status = 403
    errno = errno.EACCES


class NotFound(RingcacheError):
    """The object (or block, for a lookup-only request) does not exist."""

    http_status = 404
    errno = errno.ENOENT


class VersionMismatch(RingcacheError):
    """The object changed in the origin since its version tag was read.

    Readers re-stat and retry: blocks are pinned to a version, so a changed object is
    never served from the old version's blocks.
    """

    http_status = 409
    errno = errno.ESTALE


class OriginError(RingcacheError):
    """The origin failed (after its own retries) or timed out."""

    http_status = 502
    errno = errno.EIO
