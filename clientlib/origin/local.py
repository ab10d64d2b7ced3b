"""``file://`` origin: a local or shared directory, the embedded default.

The version tag is ``<size>-<mtime_ns>``: cheap to read, and changed by every write.
A node serving file:// URLs for remote clients must only open files under its configured
roots (``allowed_roots``), or the cache would be a way to read any file on the node.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clientlib.errors import BadRequest, Forbidden, NotFound, VersionMismatch
from clientlib.metrics import ORIGIN_BYTES, ORIGIN_REQUESTS
from clientlib.origin.base import ObjectInfo, Origin
from clientlib.urls import split_url

__all__ = ["FileOrigin"]


def _version(st: os.stat_result) -> str:
    return f"{st.st_size}-{st.st_mtime_ns}"


class FileOrigin(Origin):
    """Objects are regular files; ``allowed_roots=None`` allows every path (client side)."""

    def __init__(
        self, allowed_roots: list[Path] | None = None, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self._roots = None if allowed_roots is None else [p.resolve() for p in allowed_roots]
        self._executor = executor

    def _path(self, url: str) -> Path:
        origin, key = split_url(url)
        if origin != "file://":
            raise BadRequest(f"not a file:// URL: {url[:200]!r}")
        path = Path(key)
        if self._roots is not None:
            real = path.resolve()
            if not any(real == root or root in real.parents for root in self._roots):
                raise Forbidden(f"{url[:200]!r} is outside this node's file roots")
        return path

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stat(self, url: str) -> ObjectInfo:
        path = self._path(url)
        ORIGIN_REQUESTS.labels("stat").inc()
        try:
            st = await self._run(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such object: {url}") from None
        if not os.path.isfile(path):
            raise NotFound(f"not a regular file: {url}")
        _, key = split_url(url)
        return ObjectInfo(url, "file://", key, st.st_size, _version(st), st.st_mtime)

    def _read_sync(self, path: Path, offset: int, length: int, version: str) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise VersionMismatch(f"{path} is gone") from None
        try:
            if _version(os.fstat(fd)) != version:
                raise VersionMismatch(f"{path} changed since version {version}")
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    async def read(self, url: str, offset: int, length: int, version: str) -> bytes:
        path = self._path(url)
        ORIGIN_REQUESTS.labels("get").inc()
        data = await self._run(self._read_sync, path, offset, length, version)
        ORIGIN_BYTES.inc(len(data))
        return data

    def _list_sync(self, url: str) -> list[ObjectInfo]:
        _, key = split_url(url)
        base = self._path(url)
        out: list[ObjectInfo] = []
        if base.is_file():
            st = base.stat()
            return [ObjectInfo(url, "file://", key, st.st_size, _version(st), st.st_mtime)]
        if not base.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                out.append(
                    ObjectInfo(
                        "file://" + full, "file://", full, st.st_size, _version(st), st.st_mtime
                    )
                )
        return out

    async def list(self, url: str) -> list[ObjectInfo]:
        ORIGIN_REQUESTS.labels("list").inc()
        return await self._run(self._list_sync, url)
