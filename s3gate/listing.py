"""ListObjectsV2, ListObjects (v1) and ListBuckets, as S3 answers them.

The objects under a prefix come from the origin (``Origin.list``); the gateway applies
the delimiter, the start (``start-after``, ``marker``, ``continuation-token``), ``max-keys``
and the caller's scope: a key outside the token's scope is left out, and a common prefix
is shown only if it is covered or leads to a scope. Directory markers (keys ending in
``/``) are not objects to the origin classes, so they are not listed.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from clientlib.origin import ObjectInfo, Origin
from s3gate.caller import Caller, Target
from s3gate.errors import S3Error

__all__ = ["list_buckets", "list_objects"]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def xml_answer(body: str) -> web.Response:
    return web.Response(
        body=('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode(),
        content_type="application/xml",
    )


@dataclass
class Page:
    """One page of a listing: objects, common prefixes, and where the next one starts."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    truncated: bool
    last: str


def paginate(
    objects: Iterable[ObjectInfo], prefix: str, delimiter: str, after: str, max_keys: int
) -> Page:
    """S3's page of the sorted ``objects`` after the key ``after``: keys sharing a part
    up to the delimiter are one common prefix, counted once toward ``max_keys``."""
    page = Page([], [], False, "")
    count = 0
    for info in objects:
        key = info.key
        if key <= after or (after.endswith(delimiter) and delimiter and key.startswith(after)):
            continue
        entry: str | None = None
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                entry = key[: cut + len(delimiter)]
                if page.prefixes and page.prefixes[-1] == entry:
                    continue
        if count == max_keys:
            page.truncated = True
            break
        count += 1
        if entry is not None:
            page.prefixes.append(entry)
            page.last = entry
        else:
            page.objects.append(info)
            page.last = key
    return page


async def _objects(origin: Origin, target: Target, caller: Caller) -> list[ObjectInfo]:
    """Every object of the bucket under the target's key prefix the caller may see,
    sorted by key (keys relative to the bucket)."""
    prefix = target.key
    if target.base.startswith("file://"):
        # A directory origin lists directories: the one the prefix ends in, filtered.
        directory = posixpath.dirname(prefix)
        listed = await origin.list(target.key_url(directory + "/" if directory else ""))
    else:
        listed = await origin.list(target.url if prefix else target.base + "/")
    out = []
    for info in listed:
        key = target.key_of(info.url)
        if key.startswith(prefix) and caller.claims.covers(info.url):
            out.append(ObjectInfo(info.url, info.origin, key, info.size, info.version, info.mtime))
    out.sort(key=lambda i: i.key)
    return out


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer")
    return min(int(raw), MAX_KEYS)


def _encode(text: str, url: bool) -> str:
    return escape(quote(text, safe="/") if url else text)


def _token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error("InvalidArgument", "the continuation token is not valid") from None


async def list_objects(
    origin: Origin, target: Target, caller: Caller, query: dict[str, str], v2: bool
) -> web.Response:
    """Answer ListObjectsV2 (``v2``) or ListObjects for ``target`` (key = prefix)."""
    if not caller.may_see(target.url):
        raise S3Error("AccessDenied", f"{caller.name} may not list {target.name[:200]}")
    prefix, delimiter = target.key, query.get("delimiter", "")
    max_keys = _int_param(query, "max-keys", MAX_KEYS)
    url_encoded = query.get("encoding-type") == "url"
    if v2:
        token = query.get("continuation-token")
        after = _untoken(token) if token is not None else query.get("start-after", "")
    else:
        after = query.get("marker", "")
    page = paginate(await _objects(origin, target, caller), prefix, delimiter, after, max_keys)
    prefixes = [p for p in page.prefixes if caller.may_see(target.key_url(p))]
    parts = [f'<ListBucketResult xmlns="{NS}"><Name>{target.bucket}</Name>']
    parts.append(f"<Prefix>{_encode(prefix, url_encoded)}</Prefix>")
    if delimiter:
        parts.append(f"<Delimiter>{_encode(delimiter, url_encoded)}</Delimiter>")
    parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if url_encoded:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append(f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
    if v2:
        parts.append(f"<KeyCount>{len(page.objects) + len(prefixes)}</KeyCount>")
        if "continuation-token" in query:
            parts.append(
                f"<ContinuationToken>{escape(query['continuation-token'])}</ContinuationToken>"
            )
        if "start-after" in query:
            parts.append(f"<StartAfter>{_encode(query['start-after'], url_encoded)}</StartAfter>")
        if page.truncated:
            parts.append(f"<NextContinuationToken>{_token(page.last)}</NextContinuationToken>")
    else:
        parts.append(f"<Marker>{_encode(after, url_encoded)}</Marker>")
        if page.truncated:
            parts.append(f"<NextMarker>{_encode(page.last, url_encoded)}</NextMarker>")
    for info in page.objects:
        parts.append(
            f"<Contents><Key>{_encode(info.key, url_encoded)}</Key>"
            f"<LastModified>{iso_time(info.mtime)}</LastModified>"
            f"<ETag>&quot;{escape(info.version)}&quot;</ETag><Size>{info.size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )
    for common in prefixes:
        parts.append(
            f"<CommonPrefixes><Prefix>{_encode(common, url_encoded)}</Prefix></CommonPrefixes>"
        )
    parts.append("</ListBucketResult>")
    return xml_answer("".join(parts))


def list_buckets(names: Iterable[str], owner: str) -> web.Response:
    """Answer ListBuckets with ``names``."""
    items = "".join(
        f"<Bucket><Name>{escape(n)}</Name><CreationDate>{iso_time(0)}</CreationDate></Bucket>"
        for n in sorted(set(names))
    )
    return xml_answer(
        f'<ListAllMyBucketsResult xmlns="{NS}"><Owner><ID>{escape(owner)}</ID>'
        f"<DisplayName>{escape(owner)}</DisplayName></Owner><Buckets>{items}</Buckets>"
        "</ListAllMyBucketsResult>"
    )
