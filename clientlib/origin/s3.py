"""``s3://`` origin through boto3.

Settings come from boto3's own environment and config files (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, profiles...), so a user's existing S3 setup just works. Retries
with exponential backoff and jitter on 5xx and throttling are botocore's ``standard``
retry mode rather than a loop of our own. The version tag is the ETag; reads send
``If-Match`` so a block is never assembled from a newer version of the object. A read
into a reused buffer (a node's warm fetch: one ranged GET) is signed and sent with
botocore's parts but without ``get_object``'s per-call work
(:mod:`clientlib.origin.s3lean`), and made by ``get_object`` for any answer that path
does not take.

Writes go through boto3's managed transfers (``upload_file``, ``copy``): multipart above
``multipart_threshold`` with parts uploaded in parallel, straight from a file on disk, so
a large upload never sits in memory. A directory rename is a server-side copy of each
object under the prefix, then deletes (:meth:`S3Origin.rename_dir`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
import boto3.exceptions
import boto3.s3.transfer
import botocore.config
import botocore.exceptions
import botocore.session

from clientlib.errors import (
    BadRequest,
    ConfigError,
    NotFound,
    OriginError,
    RingcacheError,
    VersionMismatch,
)
from clientlib.metrics import ORIGIN_BYTES, ORIGIN_REQUESTS
from clientlib.origin.base import ObjectInfo, Origin, PosixAttrs, Progress, TooManyObjects
from clientlib.origin.s3lean import Answer, LeanGet
from clientlib.origin.s3recv import receive_into
from clientlib.urls import join_url, split_url

__all__ = ["S3Origin"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: An object's headers that a rewrite of its metadata keeps.
_CONTENT_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "CacheControl")


def _info(url: str, origin: str, key: str, size: int, version: dict[str, Any]) -> ObjectInfo:
    """An object's info; ``version`` is the S3 answer that carries its ``ETag`` and
    ``LastModified`` (a listing item, a HEAD, a CopyObject result)."""
    return ObjectInfo(
        url,
        origin,
        key,
        int(size),
        version["ETag"].strip('"'),
        version["LastModified"].timestamp(),
    )


def _listed(origin: str, item: dict[str, Any]) -> ObjectInfo:
    """An object as a ListObjectsV2 page describes it."""
    return _info(join_url(origin, item["Key"]), origin, item["Key"], item["Size"], item)


def _copied(url: str, item: dict[str, Any], result: dict[str, Any]) -> ObjectInfo:
    """The object ``url`` made by copying the listed ``item`` (CopyObject's ``result``)."""
    origin, key = split_url(url)
    return _info(url, origin, key, item["Size"], result)


async def _bounded(
    jobs: list[Callable[[], Awaitable[None]]], parallel: int, *, keep_going: bool = False
) -> list[RingcacheError]:
    """Run ``jobs``, at most ``parallel`` at once; their failures. Unless ``keep_going``,
    the jobs not started when the first one fails are skipped."""
    gate = asyncio.Semaphore(parallel)
    failures: list[RingcacheError] = []

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            if failures and not keep_going:
                return
            try:
                await job()
            except RingcacheError as exc:
                failures.append(exc)

    await asyncio.gather(*(run(job) for job in jobs))
    return failures


def _retries(core: botocore.session.Session, retries: int) -> dict[str, Any]:
    """botocore's retry settings: the user's where set, as every AWS tool reads them
    (``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE``, or ``max_attempts`` and ``retry_mode``
    in the profile), else ``standard`` mode with ``retries`` after the first attempt. A
    ``Config`` given to the client would override the user's settings, so they are read
    here first."""
    mode = os.environ.get("AWS_RETRY_MODE") or core.get_scoped_config().get("retry_mode")
    if mode not in (None, "standard", "adaptive", "legacy"):
        raise ConfigError(f"AWS retry_mode must be standard, adaptive or legacy, not {mode!r}")
    try:
        attempts = core.get_config_variable("max_attempts")  # all attempts, the first too
    except ValueError as exc:
        raise ConfigError(f"AWS max_attempts must be a whole number: {exc}") from None
    if attempts is None:
        return {"mode": mode or "standard", "max_attempts": retries}  # botocore: retries
    return {"mode": mode or "standard", "total_max_attempts": attempts}


class S3Origin(Origin):
    """Reads objects with a pooled boto3 client on a dedicated thread pool.

    boto3 is synchronous; its calls run on ``max_inflight`` threads so the pool bounds the
    number of requests in flight to the origin as well.
    """

    def __init__(
        self,
        max_inflight: int = 32,
        retries: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        core = botocore.session.get_session()
        config = botocore.config.Config(
            retries=_retries(core, retries),
            max_pool_connections=max_inflight,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        session = boto3.session.Session(botocore_session=core)
        self._client = session.client("s3", config=config)
        # The client's credentials object (the session caches it): refreshed as theirs.
        self._lean = LeanGet(
            self._client, session.get_credentials(), core.get_config_variable("ca_bundle")
        )
        self._executor = ThreadPoolExecutor(max_inflight, thread_name_prefix="s3-origin")
        # Transfers run their parts on their own threads; together they stay under the
        # connection pool so a large upload cannot starve reads of connections.
        self._transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=16 * 1024 * 1024,
            multipart_chunksize=16 * 1024 * 1024,
            max_concurrency=max(1, min(8, max_inflight // 4)),
            use_threads=True,
        )

    async def _call(self, fn: Any, url: str, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(**kwargs))
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise NotFound(f"no such object: {url}") from None
            if code in ("412", "PreconditionFailed"):
                raise VersionMismatch(f"{url} changed since it was opened") from None
            raise OriginError(f"S3 error on {url}: {code} {err.get('Message', '')}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise OriginError(f"S3 unreachable for {url}: {exc}") from None

    async def stat(self, url: str) -> ObjectInfo:
        return (await self._head(url))[0]

    async def _head(self, url: str) -> tuple[ObjectInfo, dict[str, Any]]:
        """One HEAD of the object ``url``: its info and the whole answer."""
        origin, key = split_url(url)
        if not key or key.endswith("/"):
            raise NotFound(f"not an object: {url}")
        ORIGIN_REQUESTS.labels("stat").inc()
        head = await self._call(self._client.head_object, url, Bucket=origin[5:], Key=key)
        info = _info(url, origin, key, head["ContentLength"], head)
        return dataclasses.replace(info, content_type=head.get("ContentType", "")), head

    def _get_object(
        self,
        bucket: str,
        key: str,
        offset: int,
        length: int,
        etag: str,
        size: int | None,
        lean: bool,
    ) -> Answer:
        """GET the range of the object at version ``etag`` (:class:`LeanGet`, ``lean`` or
        not); the answer, its body unread, once its length and the object's size are
        checked."""
        url = f"s3://{bucket}/{key}"
        got = self._lean.get(bucket, key, offset, length, etag, lean)
        # "bytes A-B/TOTAL": the object's size, for free with the bytes.
        total = str(got.content_range).rpartition("/")[2]
        if size is not None and total != str(size):
            got.body.close()
            raise VersionMismatch(f"{url} is {total or '?'} bytes, not {size}")
        if got.content_length is None or int(got.content_length) != length:
            got.body.close()
            raise OriginError(f"S3 answered {got.content_length} bytes of {url} for {length}")
        return got

    def _get_sync(
        self, bucket: str, key: str, offset: int, length: int, etag: str, size: int | None
    ) -> bytes:
        url = f"s3://{bucket}/{key}"
        # Not lean: a client reading the origin itself. A node's misses no longer come
        # here: they are received into reused buffers (read_into_then), lean, which in
        # the eighth session's cold runs was as fast as this path and cost less CPU
        # (loadtest/results/mount.md); an earlier session had found it slower (233-250
        # MB/s against 286-302) with the bytes written through the page cache.
        got = self._get_object(bucket, key, offset, length, etag, size, lean=False)
        if not got.direct:
            with got.body:
                data: bytes = got.body.read()
        else:
            assert got.fp is not None
            try:
                data = got.fp.read(length)
            except OSError as exc:
                got.body.close()
                raise OriginError(f"S3 body of {url} failed: {exc}") from None
            self._finish(url, got, len(data), length)
        if len(data) != length:
            raise OriginError(f"S3 sent {len(data)} bytes of {url}, not {length}")
        return data

    def _get_into_sync(
        self,
        bucket: str,
        key: str,
        offset: int,
        buf: memoryview,
        etag: str,
        size: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """:meth:`_get_sync` received straight into ``buf``: ``recv`` into its pages, no
        bytes object in between.

        The body is read through the ``http.client`` response under urllib3's: urllib3's
        own ``readinto`` reads into a new bytes object and copies. A body botocore wraps
        in more (a checksum check) is read with ``read()`` and copied, so that nothing
        botocore checks goes unchecked.
        """
        url = f"s3://{bucket}/{key}"
        got = self._get_object(bucket, key, offset, len(buf), etag, size, lean=True)
        fp = got.fp
        if fp is None or not got.direct:
            with got.body:
                data = got.body.read()
            if len(data) != len(buf):
                raise OriginError(f"S3 sent {len(data)} bytes of {url}, not {len(buf)}")
            buf[:] = data
            return
        try:
            done = receive_into(fp, got.sock, buf, progress)
        except OSError as exc:
            got.body.close()
            raise OriginError(f"S3 body of {url} failed: {exc}") from None
        self._finish(url, got, done, len(buf))

    @staticmethod
    def _finish(url: str, got: Answer, done: int, want: int) -> None:
        """Hand back the connection of a body read to its end; close one cut short."""
        assert got.fp is not None and got.release is not None
        if done != want or not got.fp.isclosed():
            got.body.close()
            raise OriginError(f"S3 body of {url} ended after {done} of {want} bytes")
        got.release()  # read to its end: the connection serves the next request

    async def read(
        self, url: str, offset: int, length: int, version: str, *, size: int | None = None
    ) -> bytes:
        origin, key = split_url(url)
        ORIGIN_REQUESTS.labels("get").inc()
        if length == 0:
            return b""
        data = await self._call(
            lambda: self._get_sync(origin[5:], key, offset, length, version, size), url
        )
        ORIGIN_BYTES.inc(len(data))
        return data

    async def read_into(
        self, url: str, offset: int, buf: memoryview, version: str, *, size: int | None = None
    ) -> None:
        await self.read_into_then(url, offset, buf, version, lambda: None, size=size)

    async def read_into_then(
        self,
        url: str,
        offset: int,
        buf: memoryview,
        version: str,
        then: Callable[[], T],
        *,
        size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> T:
        """:meth:`read_into`, then ``then()`` on the thread that received the bytes, which
        calls ``progress`` too (see :meth:`Origin.read_into_then`)."""
        origin, key = split_url(url)
        ORIGIN_REQUESTS.labels("get").inc()

        def get_then() -> T:
            if buf:
                self._get_into_sync(origin[5:], key, offset, buf, version, size, progress)
            return then()

        result: T = await self._call(get_then, url)
        ORIGIN_BYTES.inc(len(buf))
        return result

    def _list_sync(
        self, bucket: str, prefix: str, max_items: int | None = None
    ) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages: dict[str, Any] = {}
        if max_items is not None:
            pages["PaginationConfig"] = {"MaxItems": max_items}
        out: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **pages):
            out.extend(page.get("Contents", []))
        return out

    async def list(self, url: str) -> list[ObjectInfo]:
        origin, prefix = split_url(url)
        ORIGIN_REQUESTS.labels("list").inc()
        items = await self._call(lambda: self._list_sync(origin[5:], prefix), url)
        return [_listed(origin, item) for item in items if not item["Key"].endswith("/")]

    def _listdir_sync(
        self, bucket: str, prefix: str, max_keys: int | None, marker: list[bool] | None = None
    ) -> tuple[list[str], list[dict[str, Any]]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages: dict[str, Any] = {}
        if max_keys is not None:
            pages["PaginationConfig"] = {"MaxItems": max_keys + 1}
        dirs: list[str] = []
        files: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/", **pages):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix) :].rstrip("/")
                if name:
                    dirs.append(name)
            for item in page.get("Contents", []):
                if item["Key"] != prefix:  # the directory's own marker object
                    files.append(item)
                elif marker is not None:
                    marker.append(True)
        return dirs, files

    async def listdir(
        self, url: str, max_keys: int | None = None
    ) -> tuple[list[str], list[ObjectInfo]]:
        """One level of the tree with a ``/`` delimiter listing, every page of it."""
        origin, prefix = split_url(url)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        ORIGIN_REQUESTS.labels("list").inc()
        dirs, items = await self._call(
            lambda: self._listdir_sync(origin[5:], prefix, max_keys), url
        )
        files = [_listed(origin, item) for item in items]
        return dirs, files

    def _upload_sync(
        self,
        bucket: str,
        key: str,
        path: Path,
        extra: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> None:
        try:
            self._client.upload_file(
                str(path), bucket, key, ExtraArgs=extra, Callback=progress, Config=self._transfer
            )
        except boto3.exceptions.S3UploadFailedError as exc:
            raise OriginError(f"upload to s3://{bucket}/{key} failed: {exc}") from None

    async def write(
        self,
        url: str,
        path: Path,
        *,
        posix: PosixAttrs | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Upload ``path`` (multipart when large), then read back the new ETag.

        ``posix`` becomes the object's user metadata (``mtime`` and ``ctime`` default to
        now);
        ``progress`` is boto3's transfer callback, called as the body is sent.
        """
        origin, key = split_url(url)
        if not key or key.endswith("/"):
            raise BadRequest(f"not an object URL: {url}")
        extra = None
        if posix is not None:
            now = time.time()
            posix = dataclasses.replace(
                posix,
                mtime=now if posix.mtime is None else posix.mtime,
                ctime=now if posix.ctime is None else posix.ctime,
            )
            extra = {"Metadata": posix.to_metadata()}
        ORIGIN_REQUESTS.labels("put").inc()
        await self._call(lambda: self._upload_sync(origin[5:], key, path, extra, progress), url)
        return await self.stat(url)

    async def stat_posix(self, url: str) -> tuple[ObjectInfo, PosixAttrs]:
        """One HEAD: the object's size and ETag, and its s3fs-style user metadata."""
        info, head = await self._head(url)
        return info, PosixAttrs.from_metadata(head.get("Metadata") or {})

    async def dir_posix(self, url: str) -> PosixAttrs:
        """The metadata of the directory's marker object ``prefix/`` (a HEAD); a
        directory without a marker has none."""
        origin, key = split_url(url)
        if not key:
            return PosixAttrs()
        if not key.endswith("/"):
            key += "/"
        ORIGIN_REQUESTS.labels("stat").inc()
        try:
            head = await self._call(self._client.head_object, url, Bucket=origin[5:], Key=key)
        except NotFound:
            return PosixAttrs()
        return PosixAttrs.from_metadata(head.get("Metadata") or {})

    async def listdir_posix(
        self, url: str
    ) -> tuple[list[str], list[ObjectInfo], dict[str, PosixAttrs]]:
        """The listing knows no object's metadata, but it does show whether the
        directory has a marker object: without one, the directory has no metadata."""
        origin, prefix = split_url(url)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        ORIGIN_REQUESTS.labels("list").inc()
        seen: list[bool] = []
        dirs, items = await self._call(
            lambda: self._listdir_sync(origin[5:], prefix, None, seen), url
        )
        files = [_listed(origin, item) for item in items]
        return dirs, files, ({} if seen or not prefix else {"": PosixAttrs()})

    #: Largest object CopyObject copies in one request; larger ones need a multipart copy.
    _MAX_COPY = 5 * 1024**3

    def _set_metadata_sync(self, bucket: str, key: str, attrs: PosixAttrs) -> None:
        try:
            head = self._client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if key.endswith("/") and exc.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                # A directory that only exists as a prefix: give it a marker to hold them.
                self._put_marker_sync(bucket, key, attrs, {})
                return
            raise
        old = PosixAttrs.from_metadata(head.get("Metadata") or {})
        meta = dataclasses.replace(attrs, extra=old.extra)
        if key.endswith("/") and int(head["ContentLength"]) == 0:
            # A directory marker is written again rather than copied onto itself:
            # SeaweedFS answers NoSuchKey to a self-copy of `dir/`, and a PUT of an
            # empty marker is a request every S3 server takes the same way.
            self._put_marker_sync(bucket, key, meta, head)
            return
        extra: dict[str, Any] = {"Metadata": meta.to_metadata(), "MetadataDirective": "REPLACE"}
        for name in _CONTENT_HEADERS:
            if head.get(name):
                extra[name] = head[name]
        source = {"Bucket": bucket, "Key": key}
        if int(head["ContentLength"]) <= self._MAX_COPY:
            self._client.copy_object(
                Bucket=bucket, Key=key, CopySource=source, CopySourceIfMatch=head["ETag"], **extra
            )
        else:
            self._client.copy(source, bucket, key, ExtraArgs=extra, Config=self._transfer)

    async def set_posix(self, url: str, attrs: PosixAttrs) -> ObjectInfo | None:
        """Rewrite the object's metadata in place: CopyObject onto itself with
        ``MetadataDirective=REPLACE`` (other user metadata is kept), or, for an empty
        directory marker, a PUT of it again with the new metadata. The ETag
        may change (it does for multipart objects), so the new version is returned."""
        origin, key = split_url(url)
        if not key:
            raise BadRequest(f"the bucket root {url} has no metadata")
        ORIGIN_REQUESTS.labels("copy").inc()
        await self._call(lambda: self._set_metadata_sync(origin[5:], key, attrs), url)
        return None if key.endswith("/") else await self.stat(url)

    async def delete(self, url: str) -> None:
        origin, key = split_url(url)
        ORIGIN_REQUESTS.labels("delete").inc()
        await self._call(self._client.delete_object, url, Bucket=origin[5:], Key=key)

    async def rename(self, src: str, dst: str) -> ObjectInfo:
        """S3 has no rename: a server-side copy (multipart for large objects), then delete."""
        src_origin, src_key = split_url(src)
        dst_origin, dst_key = split_url(dst)
        ORIGIN_REQUESTS.labels("copy").inc()
        await self._call(
            lambda: self._client.copy(
                {"Bucket": src_origin[5:], "Key": src_key},
                dst_origin[5:],
                dst_key,
                Config=self._transfer,
            ),
            src,
        )
        info = await self.stat(dst)
        await self.delete(src)
        return info

    def _put_marker_sync(
        self, bucket: str, key: str, attrs: PosixAttrs, head: dict[str, Any]
    ) -> dict[str, Any]:
        """PUT the empty object ``key`` with ``attrs`` as its metadata (and ``head``'s
        content headers); the answer, with its ETag."""
        extra = {name: head[name] for name in _CONTENT_HEADERS if head.get(name)}
        return self._client.put_object(  # type: ignore[no-any-return]
            Bucket=bucket, Key=key, Body=b"", Metadata=attrs.to_metadata(), **extra
        )

    def _copy_sync(
        self, bucket: str, key: str, size: int, dst_bucket: str, dst_key: str
    ) -> dict[str, Any] | None:
        """A server-side copy keeping the metadata; CopyObject's result, or None after a
        multipart copy (over 5 GiB), which has none. A directory marker is written anew
        with the source's metadata (a HEAD and a PUT): SeaweedFS cannot copy one."""
        if dst_key.endswith("/") and size == 0:
            head = self._client.head_object(Bucket=bucket, Key=key)
            attrs = PosixAttrs.from_metadata(head.get("Metadata") or {})
            result = self._put_marker_sync(dst_bucket, dst_key, attrs, head)
            return {"ETag": result["ETag"], "LastModified": head["LastModified"]}
        source = {"Bucket": bucket, "Key": key}
        if size <= self._MAX_COPY:
            resp = self._client.copy_object(Bucket=dst_bucket, Key=dst_key, CopySource=source)
            return resp["CopyObjectResult"]  # type: ignore[no-any-return]
        self._client.copy(source, dst_bucket, dst_key, Config=self._transfer)
        return None

    async def _delete_all(self, urls: list[str], parallel: int) -> list[RingcacheError]:
        """Delete every one of ``urls``, ``parallel`` at a time; the failures."""
        return await _bounded(
            [functools.partial(self.delete, url) for url in urls], parallel, keep_going=True
        )

    async def rename_dir(
        self, src: str, dst: str, *, max_objects: int, parallel: int
    ) -> dict[str, ObjectInfo]:
        """S3 has no directory rename: one listing (of at most ``max_objects`` + 1 keys),
        a server-side copy per object, then a delete per object.

        The first failed copy stops the copying; the copies made are deleted again and
        the error is an :class:`OriginError`. The source's own marker is copied last, so
        that an empty directory being replaced is still as it was after a failure. When
        the source has no marker, the target's (an empty directory's) is deleted with the
        sources: the moved directory keeps none of the replaced one's attributes.
        """
        src_origin, src_prefix = split_url(src)
        dst_origin, dst_prefix = split_url(dst)
        if not src_prefix.endswith("/") or not dst_prefix.endswith("/"):
            raise BadRequest(f"not two directories: {src} -> {dst}")
        if src_origin == dst_origin and dst_prefix.startswith(src_prefix):
            raise BadRequest(f"cannot move {src} into itself ({dst})")
        ORIGIN_REQUESTS.labels("list").inc()
        items = await self._call(
            lambda: self._list_sync(src_origin[5:], src_prefix, max_objects + 1), src
        )
        if len(items) > max_objects:
            raise TooManyObjects(f"{src} holds more than {max_objects} objects")
        if not items:
            raise NotFound(f"no such directory: {src}")
        started = time.monotonic()
        moved: dict[str, ObjectInfo] = {}
        copied: list[str] = []

        async def copy(item: dict[str, Any]) -> None:
            name = item["Key"][len(src_prefix) :]
            source, target = join_url(src_origin, item["Key"]), dst + name
            ORIGIN_REQUESTS.labels("copy").inc()
            result = await self._call(
                functools.partial(
                    self._copy_sync,
                    src_origin[5:],
                    item["Key"],
                    int(item["Size"]),
                    dst_origin[5:],
                    dst_prefix + name,
                ),
                source,
            )
            copied.append(target)
            if name and not name.endswith("/"):
                moved[name] = (
                    await self.stat(target) if result is None else _copied(target, item, result)
                )

        objects = [item for item in items if item["Key"] != src_prefix]
        marker = [item for item in items if item["Key"] == src_prefix]
        failures = await _bounded([functools.partial(copy, item) for item in objects], parallel)
        if not failures:
            failures = await _bounded([functools.partial(copy, item) for item in marker], 1)
        if failures:
            left = await self._delete_all(copied, parallel)
            if left:
                log.error(
                    "renaming %s to %s failed; %d of its %d copies under %s are left: %s",
                    src,
                    dst,
                    len(left),
                    len(copied),
                    dst,
                    left[0],
                )
            raise OriginError(f"renaming {src} to {dst} failed, {src} is unchanged: {failures[0]}")
        doomed = [join_url(src_origin, item["Key"]) for item in items]
        if not marker:
            doomed.append(dst)
        # Markers go after the objects under them, deepest first: SeaweedFS keeps a
        # marker deleted while its directory still holds something.
        files = [url for url in doomed if not url.endswith("/")]
        left = await self._delete_all(files, parallel)
        for url in sorted(set(doomed) - set(files), key=lambda u: -u.count("/")):
            left += await self._delete_all([url], 1)
        if left:
            raise OriginError(
                f"renamed {src} to {dst}, but {len(left)} of the {len(doomed)} old objects "
                f"could not be deleted: {left[0]}"
            )
        log.info(
            "renamed %s to %s: %d objects in %.2fs",
            src,
            dst,
            len(items),
            time.monotonic() - started,
        )
        return moved

    async def mkdir(self, url: str, posix: PosixAttrs | None = None) -> None:
        origin, key = split_url(url)
        if not key.endswith("/"):
            key += "/"
        meta = {} if posix is None else {"Metadata": posix.to_metadata()}
        ORIGIN_REQUESTS.labels("put").inc()
        await self._call(self._client.put_object, url, Bucket=origin[5:], Key=key, Body=b"", **meta)

    async def rmdir(self, url: str) -> None:
        """Delete the marker; a directory that only existed as a prefix is already gone."""
        origin, key = split_url(url)
        if not key:
            raise BadRequest(f"cannot remove the bucket root {url}")
        if not key.endswith("/"):
            key += "/"
        ORIGIN_REQUESTS.labels("delete").inc()
        await self._call(self._client.delete_object, url, Bucket=origin[5:], Key=key)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._lean.close()
        self._client.close()
