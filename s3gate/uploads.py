"""Multipart uploads: parts are spooled here, and the whole object goes to the origin on
CompleteMultipartUpload (then fills the cache like a PutObject).

An upload belongs to the access key that created it; another key gets ``NoSuchUpload``.
Parts are files in the upload's spool directory (``UploadPart`` answers with the part's
MD5 as S3 does). Completion concatenates the listed parts in order and hands the file
to ``Origin.write``, which uploads it (multipart again when large). While that runs the
answer is ``200`` with whitespace every few seconds and then the result or an
``<Error>``, as S3's own CompleteMultipartUpload does, so clients do not time out.
Uploads live in this process: a restarted gateway has none (clients get
``NoSuchUpload`` and start again); nothing is acknowledged as stored before completion.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

from clientlib.auth import WRITE
from clientlib.errors import RingcacheError
from clientlib.origin import ObjectInfo, Origin
from clientlib.origin.base import PosixAttrs
from s3gate.bodies import MAX_OBJECT, read_document, receive_body
from s3gate.caller import Caller, Target
from s3gate.errors import S3Error, as_s3_error
from s3gate.listing import NS, xml_answer
from s3gate.objects import etag
from s3gate.writes import user_metadata, write_object

__all__ = ["Uploads"]

log = logging.getLogger(__name__)

MAX_PARTS = 10000
MAX_UPLOADS = 1000
#: Uploads one access key may have in progress: no key takes every slot of the gateway.
MAX_UPLOADS_PER_KEY = 100
#: Seconds between the whitespace a completion sends while the origin upload runs.
KEEPALIVE = 5.0


@dataclass
class Upload:
    """One multipart upload in progress."""

    id: str
    owner: str
    target: Target
    directory: Path
    metadata: dict[str, str]
    parts: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: A CompleteMultipartUpload is joining the parts: nothing else may touch them.
    completing: bool = False


class Uploads:
    """The multipart uploads in progress in this gateway, spooled under ``spool``."""

    def __init__(self, spool: Path) -> None:
        self._spool = spool
        self._uploads: dict[str, Upload] = {}

    def _get(self, caller: Caller, target: Target, upload_id: str) -> Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.owner != caller.name or upload.target.url != target.url:
            raise S3Error("NoSuchUpload", "the specified multipart upload does not exist")
        self._check_idle(upload)
        return upload

    def _check_idle(self, upload: Upload) -> None:
        """``NoSuchUpload`` if ``upload`` is gone (aborted, completed), ``OperationAborted``
        while it is being completed: a second completion (a client's retry), a part or an
        abort then would change the files the first one is joining."""
        if self._uploads.get(upload.id) is not upload:
            raise S3Error("NoSuchUpload", "the specified multipart upload does not exist")
        if upload.completing:
            raise S3Error("OperationAborted", "the upload is being completed")

    async def create(self, request: web.Request, caller: Caller, target: Target) -> web.Response:
        """CreateMultipartUpload."""
        caller.require(target, WRITE)
        if len(self._uploads) >= MAX_UPLOADS:
            raise S3Error("ServiceUnavailable", "too many multipart uploads in progress")
        if sum(u.owner == caller.name for u in self._uploads.values()) >= MAX_UPLOADS_PER_KEY:
            raise S3Error(
                "InvalidRequest",
                f"{caller.name} has {MAX_UPLOADS_PER_KEY} multipart uploads in progress: "
                "complete or abort one first",
            )
        directory = Path(tempfile.mkdtemp(prefix="upload-", dir=self._spool))
        upload_id = directory.name
        meta = user_metadata(request, target)
        self._uploads[upload_id] = Upload(
            upload_id, caller.name, target, directory, meta.to_metadata() if meta else {}
        )
        log.info("%s started upload %s of %s", caller.name, upload_id, target.url)
        return xml_answer(
            f'<InitiateMultipartUploadResult xmlns="{NS}"><Bucket>{target.bucket}</Bucket>'
            f"<Key>{escape(target.key)}</Key><UploadId>{upload_id}</UploadId>"
            "</InitiateMultipartUploadResult>"
        )

    async def put_part(
        self, request: web.Request, caller: Caller, target: Target, upload_id: str, number: str
    ) -> web.Response:
        """UploadPart: the part's body to the upload's directory; its MD5 as ETag."""
        upload = self._get(caller, target, upload_id)
        caller.require(target, WRITE)
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= MAX_PARTS:
            raise S3Error("InvalidArgument", f"partNumber must be 1 to {MAX_PARTS}")
        part = int(number)
        path = upload.directory / f"part-{part:05d}"
        received = await receive_body(request, caller.signed, path.with_suffix(".new"))
        try:
            self._check_idle(upload)
        except S3Error:
            path.with_suffix(".new").unlink(missing_ok=True)
            raise
        path.with_suffix(".new").replace(path)
        upload.parts[part] = (received.md5, received.size)
        return web.Response(headers={"ETag": f'"{received.md5}"'})

    async def abort(self, caller: Caller, target: Target, upload_id: str) -> web.Response:
        """AbortMultipartUpload: the parts are removed."""
        upload = self._get(caller, target, upload_id)
        caller.require(target, WRITE)
        self._drop(upload)
        return web.Response(status=204)

    def _drop(self, upload: Upload) -> None:
        self._uploads.pop(upload.id, None)
        shutil.rmtree(upload.directory, ignore_errors=True)

    def close(self) -> None:
        """Remove every upload's parts (the gateway is stopping)."""
        for upload in list(self._uploads.values()):
            self._drop(upload)

    async def complete(
        self,
        request: web.Request,
        caller: Caller,
        origin: Origin,
        target: Target,
        upload_id: str,
    ) -> web.StreamResponse:
        """CompleteMultipartUpload: the listed parts, in order, become the object."""
        upload = self._get(caller, target, upload_id)
        caller.require(target, WRITE)
        chosen = _chosen_parts(await read_document(request, caller.signed), upload)
        self._check_idle(upload)
        upload.completing = True
        response = web.StreamResponse(headers={"Content-Type": "application/xml"})
        await response.prepare(request)
        await response.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
        job = asyncio.ensure_future(self._assemble(caller, origin, upload, chosen))
        while True:
            done, _ = await asyncio.wait({job}, timeout=KEEPALIVE)
            if done:
                break
            await response.write(b" ")
        try:
            info = job.result()
        except RingcacheError as exc:
            error = as_s3_error(exc)
            log.warning("upload %s of %s failed: %s", upload.id, target.url, exc)
            body = (
                f"<Error><Code>{error.code}</Code><Message>{escape(str(error))}</Message></Error>"
            )
        else:
            body = (
                f'<CompleteMultipartUploadResult xmlns="{NS}"><Bucket>{target.bucket}</Bucket>'
                f"<Key>{escape(target.key)}</Key><ETag>{escape(etag(info))}</ETag>"
                "</CompleteMultipartUploadResult>"
            )
        await response.write(body.encode())
        await response.write_eof()
        return response

    async def _assemble(
        self, caller: Caller, origin: Origin, upload: Upload, parts: list[int]
    ) -> ObjectInfo:
        try:
            info = await self._join_and_write(caller, origin, upload, parts)
        except BaseException:
            upload.completing = False  # the client may complete it again
            raise
        self._drop(upload)
        return info

    async def _join_and_write(
        self, caller: Caller, origin: Origin, upload: Upload, parts: list[int]
    ) -> ObjectInfo:
        whole = upload.directory / "whole"
        size = await asyncio.to_thread(_concatenate, upload.directory, parts, whole)
        if size > MAX_PARTS * MAX_OBJECT:
            raise S3Error("EntityTooLarge", "the object is too large")
        posix = PosixAttrs.from_metadata(upload.metadata) if upload.metadata else None
        try:
            info = await write_object(caller, origin, upload.target, whole, size, posix)
        finally:
            whole.unlink(missing_ok=True)
        log.info("%s completed upload %s: %s, %d bytes", caller.name, upload.id, info.url, size)
        return info


def _chosen_parts(body: bytes, upload: Upload) -> list[int]:
    """The part numbers CompleteMultipartUpload lists, checked against what was sent."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    numbers: list[int] = []
    for part in root.iter():
        if not part.tag.endswith("Part"):
            continue
        fields = {child.tag.rpartition("}")[2]: (child.text or "").strip() for child in part}
        try:
            number = int(fields.get("PartNumber", ""))
        except ValueError:
            raise S3Error("MalformedXML", "a Part without a PartNumber") from None
        sent = upload.parts.get(number)
        if sent is None or fields.get("ETag", "").strip('"') != sent[0]:
            raise S3Error("InvalidPart", f"part {number} was not uploaded, or its ETag differs")
        if numbers and number <= numbers[-1]:
            raise S3Error("InvalidPartOrder", "parts must be listed in ascending order")
        numbers.append(number)
    if not numbers:
        raise S3Error("MalformedXML", "CompleteMultipartUpload lists no parts")
    return numbers


def _concatenate(directory: Path, parts: list[int], whole: Path) -> int:
    size = 0
    with whole.open("wb") as out:
        for number in parts:
            with (directory / f"part-{number:05d}").open("rb") as part:
                length = os.fstat(part.fileno()).st_size
                copied = 0
                while copied < length:
                    step = os.copy_file_range(part.fileno(), out.fileno(), length - copied)
                    if step == 0:
                        raise S3Error("InternalError", f"part {number} shrank while completing")
                    copied += step
                size += length
    return size
