"""Receiving an upload's body into a spool file, checked against what its request signed.

A body is written to disk as it arrives, never held whole in memory: plain bodies are
hashed against ``x-amz-content-sha256`` (and ``Content-MD5`` if sent), aws-chunked ones
decoded with every chunk signature checked (:class:`s3gate.sigv4.ChunkedDecoder`), and a
body that stalls for :data:`BODY_IDLE` seconds is refused (``RequestTimeout``). A body
that does not match is refused and its file removed; nothing reaches the origin.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from s3gate.errors import S3Error
from s3gate.metrics import GATEWAY_BYTES
from s3gate.sigv4 import BodyHash, ChunkedDecoder, Signed

__all__ = ["MAX_DOCUMENT", "MAX_OBJECT", "Received", "read_document", "receive_body"]

#: S3's largest single PUT (and part).
MAX_OBJECT = 5 * 1024**3
#: The largest XML request body (a CompleteMultipartUpload of 10,000 parts, a
#: DeleteObjects of 1,000 keys).
MAX_DOCUMENT = 2 * 1024 * 1024
_READ = 1024 * 1024
#: Longest wait for the next piece of a body (an aws-chunked chunk, or any bytes of a plain
#: one): a stalled upload gives up its connection, spool file and upload slot.
BODY_IDLE = 120.0


@dataclass(frozen=True)
class Received:
    """A body now on disk: its size and MD5 (hex, S3's ETag of a single PUT)."""

    size: int
    md5: str


def _declared_length(request: web.Request, signed: Signed | None) -> int | None:
    header = "X-Amz-Decoded-Content-Length" if signed and signed.streaming else "Content-Length"
    raw = request.headers.get(header)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise S3Error("InvalidArgument", f"{header} is not a number")
    return int(raw)


async def _chunks(request: web.Request, signed: Signed | None) -> AsyncIterator[bytes]:
    """The payload, each piece within :data:`BODY_IDLE` seconds of the last."""
    pieces = _payload(request, signed)
    try:
        while True:
            try:
                async with asyncio.timeout(BODY_IDLE):
                    chunk = await anext(pieces)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise S3Error(
                    "RequestTimeout", f"no more of the body came within {BODY_IDLE:.0f} s"
                ) from None
            yield chunk
    finally:
        await pieces.aclose()


async def _payload(request: web.Request, signed: Signed | None) -> AsyncIterator[bytes]:
    if signed is not None and signed.streaming:
        async for chunk in ChunkedDecoder(signed, request.content).chunks():
            yield chunk
        return
    check = BodyHash(signed.payload if signed is not None else "")
    async for chunk in request.content.iter_chunked(_READ):
        check.update(chunk)
        yield chunk
    check.check()


async def receive_body(request: web.Request, signed: Signed | None, path: Path) -> Received:
    """Write the request's payload to ``path``; refused (and removed) unless it is the
    body the request signed, of the length it declared, at most :data:`MAX_OBJECT`."""
    declared = _declared_length(request, signed)
    if declared is not None and declared > MAX_OBJECT:
        raise S3Error("EntityTooLarge", f"a body is at most {MAX_OBJECT} bytes")
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with path.open("wb") as out:
            async for chunk in _chunks(request, signed):
                size += len(chunk)
                if size > MAX_OBJECT:
                    raise S3Error("EntityTooLarge", f"a body is at most {MAX_OBJECT} bytes")
                md5.update(chunk)
                await asyncio.to_thread(out.write, chunk)
                GATEWAY_BYTES.labels("in").inc(len(chunk))
        if declared is not None and size != declared:
            raise S3Error("IncompleteBody", f"the body has {size} bytes, not {declared}")
        _check_md5(request, md5.digest())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Received(size, md5.hexdigest())


async def read_document(request: web.Request, signed: Signed | None) -> bytes:
    """A small request body (an XML document) in memory, checked like an upload's."""
    parts: list[bytes] = []
    size = 0
    async for chunk in _chunks(request, signed):
        size += len(chunk)
        if size > MAX_DOCUMENT:
            raise S3Error("InvalidRequest", f"the request body is larger than {MAX_DOCUMENT} bytes")
        parts.append(chunk)
    body = b"".join(parts)
    _check_md5(request, hashlib.md5(body, usedforsecurity=False).digest())
    return body


def _check_md5(request: web.Request, digest: bytes) -> None:
    given = request.headers.get("Content-MD5")
    if given is None:
        return
    try:
        want = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "Content-MD5 is not base64") from None
    if not hmac.compare_digest(want, digest):
        raise S3Error("BadDigest", "the Content-MD5 you specified did not match what we received")


def spool_path(spool_dir: Path, name: str) -> Path:
    """A new file name in the spool directory (``name`` says what it holds)."""
    return spool_dir / f"{name}-{os.urandom(8).hex()}"
