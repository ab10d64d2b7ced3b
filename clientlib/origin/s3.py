"""``s3://`` origin through boto3.

Settings come from boto3's own environment and config files (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, profiles...), so a user's existing S3 setup just works. Retries
with exponential backoff and jitter on 5xx and throttling are botocore's ``standard``
retry mode rather than a loop of our own. The version tag is the ETag; reads send
``If-Match`` so a block is never assembled from a newer version of the object.

Writes go through boto3's managed transfers (``upload_file``, ``copy``): multipart above
``multipart_threshold`` with parts uploaded in parallel, straight from a file on disk, so
a large upload never sits in memory.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
import boto3.s3.transfer
import botocore.config
import botocore.exceptions

from clientlib.errors import BadRequest, NotFound, OriginError, VersionMismatch
from clientlib.metrics import ORIGIN_BYTES, ORIGIN_REQUESTS
from clientlib.origin.base import ObjectInfo, Origin
from clientlib.urls import join_url, split_url

__all__ = ["S3Origin"]

log = logging.getLogger(__name__)


class S3Origin(Origin):
    """Reads objects with a pooled boto3 client on a dedicated thread pool.

    boto3 is synchronous; its calls run on ``max_inflight`` threads so the pool bounds the
    number of requests in flight to the origin as well.
    """

    def __init__(
        self,
        max_inflight: int = 32,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=max_inflight,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._client = boto3.session.Session().client("s3", config=config)
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
        origin, key = split_url(url)
        if not key or key.endswith("/"):
            raise NotFound(f"not an object: {url}")
        ORIGIN_REQUESTS.labels("stat").inc()
        head = await self._call(self._client.head_object, url, Bucket=origin[5:], Key=key)
        return ObjectInfo(
            url,
            origin,
            key,
            int(head["ContentLength"]),
            head["ETag"].strip('"'),
            head["LastModified"].timestamp(),
        )

    def _get_sync(self, bucket: str, key: str, offset: int, length: int, etag: str) -> bytes:
        resp = self._client.get_object(
            Bucket=bucket,
            Key=key,
            Range=f"bytes={offset}-{offset + length - 1}",
            IfMatch=f'"{etag}"',
        )
        with resp["Body"] as body:
            return body.read()

    async def read(self, url: str, offset: int, length: int, version: str) -> bytes:
        origin, key = split_url(url)
        ORIGIN_REQUESTS.labels("get").inc()
        if length == 0:
            return b""
        data = await self._call(
            lambda: self._get_sync(origin[5:], key, offset, length, version), url
        )
        ORIGIN_BYTES.inc(len(data))
        return data

    def _list_sync(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        out: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    async def list(self, url: str) -> list[ObjectInfo]:
        origin, prefix = split_url(url)
        ORIGIN_REQUESTS.labels("list").inc()
        items = await self._call(lambda: self._list_sync(origin[5:], prefix), url)
        return [
            ObjectInfo(
                join_url(origin, item["Key"]),
                origin,
                item["Key"],
                int(item["Size"]),
                item["ETag"].strip('"'),
                item["LastModified"].timestamp(),
            )
            for item in items
            if not item["Key"].endswith("/")
        ]

    def _listdir_sync(
        self, bucket: str, prefix: str, max_keys: int | None
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
        files = [
            ObjectInfo(
                join_url(origin, item["Key"]),
                origin,
                item["Key"],
                int(item["Size"]),
                item["ETag"].strip('"'),
                item["LastModified"].timestamp(),
            )
            for item in items
        ]
        return dirs, files

    def _upload_sync(self, bucket: str, key: str, path: Path) -> None:
        try:
            self._client.upload_file(str(path), bucket, key, Config=self._transfer)
        except boto3.exceptions.S3UploadFailedError as exc:
            raise OriginError(f"upload to s3://{bucket}/{key} failed: {exc}") from None

    async def write(self, url: str, path: Path) -> ObjectInfo:
        """Upload ``path`` (multipart when large), then read back the new ETag."""
        origin, key = split_url(url)
        if not key or key.endswith("/"):
            raise BadRequest(f"not an object URL: {url}")
        ORIGIN_REQUESTS.labels("put").inc()
        await self._call(lambda: self._upload_sync(origin[5:], key, path), url)
        return await self.stat(url)

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

    async def mkdir(self, url: str) -> None:
        origin, key = split_url(url)
        if not key.endswith("/"):
            key += "/"
        ORIGIN_REQUESTS.labels("put").inc()
        await self._call(self._client.put_object, url, Bucket=origin[5:], Key=key, Body=b"")

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
        self._client.close()
