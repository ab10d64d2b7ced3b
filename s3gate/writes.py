"""PutObject, DeleteObject and DeleteObjects: writes pass through to the origin, and PUTs
fill the cache.

A written object is uploaded from its spool file with ``Origin.write`` (multipart for
large files, as the mount's writes), then its blocks are pushed to their owners under
the new version (:func:`clientlib.fill.fill_from_fd`), so the next reader, through this gateway, a
mount or a job, reads them as hits. A fill needs the caller's token to have the
``write`` right, like the mount's; a failed fill only means the next read misses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

from clientlib import CacheClient
from clientlib.auth import WRITE
from clientlib.errors import NotFound, RingcacheError
from clientlib.fill import fill_from_fd
from clientlib.origin import ObjectInfo, Origin
from clientlib.origin.base import PosixAttrs
from s3gate.bodies import read_document, receive_body, spool_path
from s3gate.caller import Buckets, Caller, Target
from s3gate.errors import S3Error, as_s3_error
from s3gate.listing import NS, xml_answer
from s3gate.objects import etag

__all__ = ["delete_object", "delete_objects", "put_object", "write_object"]

log = logging.getLogger(__name__)

#: The mode bits a caller may give a written object in ``x-amz-meta-mode``: read, write
#: and execute, never setuid, setgid or sticky; in a ``file://`` bucket never group or
#: other write either (the file is on this machine, beside other scopes' files).
S3_MODE_BITS = 0o777
FILE_MODE_BITS = 0o755


def user_metadata(request: web.Request, target: Target) -> PosixAttrs | None:
    """The ``x-amz-meta-*`` headers of a write to ``target``, as the origin stores user
    metadata, made harmless: the mode is a regular file's with at most the permission
    bits above, and in a ``file://`` bucket ``uid`` and ``gid`` are dropped (the file
    belongs to the gateway's user, not to whoever the caller names)."""
    meta = {
        name[11:].lower(): value
        for name, value in request.headers.items()
        if name.lower().startswith("x-amz-meta-")
    }
    if not meta:
        return None
    posix = PosixAttrs.from_metadata(meta)
    local = target.base.startswith("file://")
    if posix.mode is not None:
        bits = FILE_MODE_BITS if local else S3_MODE_BITS
        posix = dataclasses.replace(posix, mode=stat.S_IFREG | (posix.mode & bits))
    if local:
        posix = dataclasses.replace(posix, uid=None, gid=None)
    return posix


async def _fill(client: CacheClient, info: ObjectInfo, path: Path) -> None:
    """Push every block of the just-written ``info``, read from ``path``, to its owners."""
    bs = client.block_size
    fd = os.open(path, os.O_RDONLY)
    try:
        await fill_from_fd(fd, info, bs, lambda index, data: client.fill(info, index, data, bs))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _nothing_in_the_way(target: Target) -> Iterator[None]:
    """``InvalidArgument`` for a key a ``--bucket`` directory cannot hold as a file: one
    that is a directory there, or one under a file."""
    try:
        yield
    except (IsADirectoryError, NotADirectoryError):
        raise S3Error(
            "InvalidArgument", f"{target.name[:200]} is a directory, or under a file, here"
        ) from None


async def write_object(
    caller: Caller,
    origin: Origin,
    target: Target,
    path: Path,
    size: int,
    posix: PosixAttrs | None,
) -> ObjectInfo:
    """Upload ``path`` as ``target``, then fill the cache with it if the origin now holds
    exactly what was written (another writer in between: no fill)."""
    url = target.url
    with _nothing_in_the_way(target):
        info = await origin.write(url, path, posix=posix)
    caller.client.forget(url)
    if info.size == size:
        await _fill(caller.client, info, path)
    else:
        log.warning("%s is %d bytes after writing %d: not filling the cache", url, info.size, size)
    return info


async def put_object(
    request: web.Request, caller: Caller, origin: Origin, target: Target, spool: Path
) -> web.Response:
    """Answer PutObject: the body to disk (checked), to the origin, into the cache."""
    caller.require(target, WRITE)
    path = spool_path(spool, "put")
    received = await receive_body(request, caller.signed, path)
    try:
        info = await write_object(
            caller, origin, target, path, received.size, user_metadata(request, target)
        )
    finally:
        path.unlink(missing_ok=True)
    log.info("%s put %s: %d bytes", caller.name, target.url, received.size)
    return web.Response(headers={"ETag": etag(info)})


async def delete_object(caller: Caller, origin: Origin, target: Target) -> web.Response:
    """Answer DeleteObject (``204`` whether or not the key existed, as S3 does)."""
    caller.require(target, WRITE)
    with contextlib.suppress(NotFound), _nothing_in_the_way(target):
        await origin.delete(target.url)
    caller.client.forget(target.url)
    log.info("%s deleted %s", caller.name, target.url)
    return web.Response(status=204)


#: Keys one DeleteObjects may name (S3's limit).
MAX_DELETE = 1000


def _keys_to_delete(body: bytes) -> tuple[list[str], bool]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    keys: list[str] = []
    quiet = False
    for element in root:
        tag = element.tag.rpartition("}")[2]
        if tag == "Quiet":
            quiet = (element.text or "").strip().lower() == "true"
        elif tag == "Object":
            key = next((c.text or "" for c in element if c.tag.rpartition("}")[2] == "Key"), "")
            keys.append(key)
    if not keys or len(keys) > MAX_DELETE:
        raise S3Error("MalformedXML", f"DeleteObjects names 1 to {MAX_DELETE} keys")
    return keys, quiet


async def delete_objects(
    request: web.Request, caller: Caller, origin: Origin, buckets: Buckets, bucket: str
) -> web.Response:
    """Answer DeleteObjects: each key deleted as by DeleteObject, each failure reported
    in the answer (``AccessDenied`` for a key outside the caller's write scope)."""
    keys, quiet = _keys_to_delete(await read_document(request, caller.signed))
    parts = [f'<DeleteResult xmlns="{NS}">']
    for key in keys:
        try:
            await delete_object(caller, origin, buckets.target(bucket, key))
        except RingcacheError as exc:
            error = as_s3_error(exc)
            parts.append(
                f"<Error><Key>{escape(key)}</Key><Code>{error.code}</Code>"
                f"<Message>{escape(str(error))}</Message></Error>"
            )
            continue
        if not quiet:
            parts.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
    parts.append("</DeleteResult>")
    return xml_answer("".join(parts))
