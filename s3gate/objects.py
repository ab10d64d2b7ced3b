"""GetObject and HeadObject: an object's bytes through the cache, with S3's headers.

A GET names one object version (the stat at its start) and streams it block by block
through the ring, ``read_ahead`` blocks fetched ahead of the one being sent: a whole
object is never in memory. Blocks are pinned to that version; if the object changes
during the GET the connection is dropped before the ``Content-Length`` it promised, so
a client never receives a mix of two versions. Range (one range, ``416`` for bad ones),
``If-Match``, ``If-None-Match``, ``If-Modified-Since`` and ``If-Unmodified-Since`` are
S3's, and so are the headers: the origin's size, ETag, Last-Modified and Content-Type.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import mimetypes
from collections.abc import Awaitable
from email.utils import formatdate, parsedate_to_datetime

from aiohttp import web

from clientlib import CacheClient
from clientlib.errors import RingcacheError
from clientlib.origin import ObjectInfo
from clientlib.ranges import Span, parse_range
from s3gate.errors import S3Error
from s3gate.metrics import GATEWAY_BYTES

__all__ = ["object_headers", "send_object"]

log = logging.getLogger(__name__)


def etag(info: ObjectInfo) -> str:
    """The object's ETag as S3 sends it (quoted)."""
    return f'"{info.version}"'


def object_headers(info: ObjectInfo) -> dict[str, str]:
    """The headers S3 sends with an object: ETag, Last-Modified, Content-Type."""
    kind = info.content_type or mimetypes.guess_type(info.key)[0] or "binary/octet-stream"
    return {
        "ETag": etag(info),
        "Last-Modified": formatdate(info.mtime, usegmt=True),
        "Content-Type": kind,
        "Accept-Ranges": "bytes",
    }


def _etag_listed(header: str, info: ObjectInfo) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/").strip('"') == info.version for t in tags)


def _http_date(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None  # S3 ignores a date it cannot parse


def check_conditions(request: web.Request, info: ObjectInfo) -> None:
    """S3's rules for conditional GET/HEAD: ``412 PreconditionFailed`` or ``304``.

    A matching ``If-Match`` overrides ``If-Unmodified-Since``, and a present
    ``If-None-Match`` overrides ``If-Modified-Since``, as in S3 and RFC 7232.
    """
    mtime = int(info.mtime)
    if_match = request.headers.get("If-Match")
    unmodified = _http_date(request.headers.get("If-Unmodified-Since"))
    if (if_match is not None and not _etag_listed(if_match, info)) or (
        if_match is None and unmodified is not None and mtime > unmodified
    ):
        raise S3Error(
            "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
        )
    if_none = request.headers.get("If-None-Match")
    modified = _http_date(request.headers.get("If-Modified-Since"))
    if (if_none is not None and _etag_listed(if_none, info)) or (
        if_none is None and modified is not None and mtime <= modified
    ):
        raise web.HTTPNotModified(headers={"ETag": etag(info)})


def requested_span(request: web.Request, info: ObjectInfo) -> Span:
    """The one range a GET asks for (all of the object without ``Range``)."""
    ranges = request.headers.getall("Range", [])
    if info.size == 0:
        return Span.whole(0)  # S3 answers a ranged GET of an empty object with all of it
    return parse_range(ranges, info.size)


async def send_object(
    request: web.Request, client: CacheClient, info: ObjectInfo, read_ahead: int
) -> web.StreamResponse:
    """Answer a GET (or HEAD) of ``info``: headers, then the asked bytes as they come."""
    check_conditions(request, info)
    span = requested_span(request, info)
    response = web.StreamResponse(status=span.status, headers=object_headers(info))
    response.headers.update(span.headers())
    response.content_length = span.nbytes
    if request.method == "HEAD" or span.nbytes == 0:
        await response.prepare(request)
        await response.write_eof()
        return response
    # The first block is fetched before the headers go out: a missing object or a node
    # and origin both down is still an S3 error, not a cut connection.
    blocks = _BlockStream(client, info, span, read_ahead)
    try:
        first = await blocks.next()
        await response.prepare(request)
        await response.write(first)
        GATEWAY_BYTES.labels("out").inc(len(first))
        while (data := await blocks.next()) is not None:
            await response.write(data)
            GATEWAY_BYTES.labels("out").inc(len(data))
    except RingcacheError as exc:
        if not response.prepared:
            raise
        log.warning("GET %s cut short after the headers: %s", info.url, exc)
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError(str(exc)) from None
    finally:
        blocks.cancel()
    await response.write_eof()
    return response


class _BlockStream:
    """The bytes of ``span`` of one object version, block by block, ``read_ahead``
    blocks fetched ahead of the one handed out."""

    def __init__(self, client: CacheClient, info: ObjectInfo, span: Span, read_ahead: int):
        self._client = client
        self._info = info
        self._span = span
        self._bs = client.block_size
        self._next = span.start // self._bs
        self._last = (span.stop - 1) // self._bs
        self._ahead = read_ahead
        self._pending: collections.deque[asyncio.Task[bytes | memoryview]] = collections.deque()

    def _fetch(self, index: int) -> Awaitable[bytes | memoryview]:
        bs, info = self._bs, self._info
        base = index * bs
        start = max(self._span.start, base) - base
        stop = min(self._span.stop, base + bs) - base
        if start == 0 and stop == min(bs, info.size - base):
            return self._client.read_block(info, index, keep=False, block_size=bs)
        return self._client.read_part(info, index, start, stop, block_size=bs)

    def _fill(self) -> None:
        while self._next <= self._last and len(self._pending) <= self._ahead:
            self._pending.append(asyncio.ensure_future(self._fetch(self._next)))
            self._next += 1

    async def next(self) -> bytes | memoryview | None:
        """The next block's bytes, or ``None`` after the last."""
        self._fill()
        if not self._pending:
            return None
        data = await self._pending.popleft()
        self._fill()
        return data

    def cancel(self) -> None:
        for task in self._pending:
            task.cancel()
        self._pending.clear()
