"""``file://`` origin: a local or shared directory, the embedded default.

The version tag is ``<size>-<mtime_ns>``: cheap to read, and changed by every write.
Writes replace a file atomically (a temporary file beside it, then ``rename``), and
the directory methods are the real ``mkdir``/``rmdir``, whose ``OSError`` carries the
errno a file system caller wants (``EEXIST``, ``ENOTEMPTY``).
A node serving file:// URLs for remote clients must only open files under its configured
roots (``allowed_roots``), or the cache would be a way to read any file on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
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

    def check(self, url: str) -> None:
        self._path(url)

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

    def _listdir_sync(self, path: Path, max_keys: int | None) -> tuple[list[str], list[ObjectInfo]]:
        dirs: list[str] = []
        files: list[ObjectInfo] = []
        try:
            entries = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such directory: {path}") from None
        with entries:
            for entry in entries:
                if max_keys is not None and len(dirs) + len(files) >= max_keys:
                    break
                try:
                    if entry.is_dir():
                        dirs.append(entry.name)
                    elif entry.is_file():
                        st = entry.stat()
                        full = os.path.join(path, entry.name)
                        files.append(
                            ObjectInfo(
                                "file://" + full,
                                "file://",
                                full,
                                st.st_size,
                                _version(st),
                                st.st_mtime,
                            )
                        )
                except FileNotFoundError:
                    continue
        return dirs, files

    async def listdir(
        self, url: str, max_keys: int | None = None
    ) -> tuple[list[str], list[ObjectInfo]]:
        """One directory with ``os.scandir`` (subdirectories and regular files)."""
        ORIGIN_REQUESTS.labels("list").inc()
        return await self._run(self._listdir_sync, self._path(url), max_keys)

    @staticmethod
    def _write_sync(dest: Path, source: Path) -> None:
        # Copy beside the destination, flush it to disk, then rename over: a reader sees
        # the old file or the whole new one, never a half-written one.
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def write(self, url: str, path: Path) -> ObjectInfo:
        ORIGIN_REQUESTS.labels("put").inc()
        await self._run(self._write_sync, self._path(url), path)
        return await self.stat(url)

    async def delete(self, url: str) -> None:
        ORIGIN_REQUESTS.labels("delete").inc()
        try:
            await self._run(os.unlink, self._path(url))
        except FileNotFoundError:
            raise NotFound(f"no such object: {url}") from None

    async def rename(self, src: str, dst: str) -> ObjectInfo:
        ORIGIN_REQUESTS.labels("copy").inc()
        try:
            await self._run(os.replace, self._path(src), self._path(dst))
        except FileNotFoundError:
            raise NotFound(f"no such object: {src}") from None
        return await self.stat(dst)

    async def mkdir(self, url: str) -> None:
        ORIGIN_REQUESTS.labels("put").inc()
        await self._run(os.mkdir, self._path(url))

    async def rmdir(self, url: str) -> None:
        ORIGIN_REQUESTS.labels("delete").inc()
        await self._run(os.rmdir, self._path(url))
