"""``file://`` origin: a local or shared directory, the embedded default.

The version tag is ``<size>-<mtime_ns>``: cheap to read, and changed by every write.
Writes replace a file atomically (a temporary file beside it, then ``rename``), and
the directory methods are the real ``mkdir``/``rmdir``, whose ``OSError`` carries the
errno a file system caller wants (``EEXIST``, ``ENOTEMPTY``).
A node serving file:// URLs for remote clients must only open files under its configured
roots (``allowed_roots``), or the cache would be a way to read any file on the node.
POSIX attributes are the files' own: ``set_posix`` is ``chmod``/``chown``/``utime``
(note that a new mtime is a new version tag).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clientlib.errors import BadRequest, Forbidden, NotFound, VersionMismatch
from clientlib.metrics import ORIGIN_BYTES, ORIGIN_REQUESTS
from clientlib.origin.base import ObjectInfo, Origin, PosixAttrs, Progress
from clientlib.urls import split_url

__all__ = ["FileOrigin"]

log = logging.getLogger(__name__)

#: Bytes of a file's name kept in the name of its temporary copy (``.<stem>.<random>.part``,
#: at most 1 + 200 + 1 + 8 + 5 = 215 bytes: within NAME_MAX for any final name).
TEMP_STEM = 200


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
    def _write_sync(
        dest: Path,
        source: Path,
        posix: PosixAttrs | None = None,
        progress: Progress | None = None,
    ) -> None:
        # Copy beside the destination, flush it to disk, then rename over: a reader sees
        # the old file or the whole new one, never a half-written one. The temporary name
        # keeps at most TEMP_STEM bytes of the final one (NAME_MAX).
        stem = os.fsdecode(os.fsencode(dest.name)[:TEMP_STEM])
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                if progress is None:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                else:
                    while chunk := src.read(1024 * 1024):
                        progress(len(chunk))
                        out.write(chunk)
                out.flush()
                if posix is not None:
                    FileOrigin._apply_sync(Path(tmp), posix, strict=False, fd=out.fileno())
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def write(
        self,
        url: str,
        path: Path,
        *,
        posix: PosixAttrs | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Replace the file; ``posix`` sets its mode and owner (the owner only where this
        process may: a refused chown is logged, not an error) and, if given, its mtime."""
        ORIGIN_REQUESTS.labels("put").inc()
        await self._run(self._write_sync, self._path(url), path, posix, progress)
        return await self.stat(url)

    @staticmethod
    def _apply_sync(path: Path, attrs: PosixAttrs, strict: bool, fd: int | None = None) -> None:
        """chown, chmod and utime ``path`` to ``attrs`` (fields that are None stay).

        The owner comes first: a chown clears the setuid and setgid bits of a file, even
        root's, so the mode set after it is the mode stored.
        """
        target: int | Path = fd if fd is not None else path
        if attrs.uid is not None or attrs.gid is not None:
            uid = -1 if attrs.uid is None else attrs.uid
            gid = -1 if attrs.gid is None else attrs.gid
            try:
                os.chown(target, uid, gid)
            except PermissionError:
                if strict:
                    raise
                log.debug("cannot give %s to %d:%d; owner left as is", path, uid, gid)
        if attrs.perm is not None:
            os.chmod(target, attrs.perm)
        if attrs.mtime is not None:
            ns = round(attrs.mtime * 1e9)
            os.utime(target, ns=(ns, ns))

    async def stat_posix(self, url: str) -> tuple[ObjectInfo, PosixAttrs]:
        path = self._path(url)
        ORIGIN_REQUESTS.labels("stat").inc()
        try:
            st = await self._run(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such object: {url}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"not a regular file: {url}")
        _, key = split_url(url)
        info = ObjectInfo(url, "file://", key, st.st_size, _version(st), st.st_mtime)
        return info, PosixAttrs.from_stat(st)

    async def dir_posix(self, url: str) -> PosixAttrs:
        ORIGIN_REQUESTS.labels("stat").inc()
        try:
            return PosixAttrs.from_stat(await self._run(os.stat, self._path(url)))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such directory: {url}") from None

    def _listdir_posix_sync(
        self, path: Path
    ) -> tuple[list[str], list[ObjectInfo], dict[str, PosixAttrs]]:
        dirs: list[str] = []
        files: list[ObjectInfo] = []
        attrs: dict[str, PosixAttrs] = {}
        try:
            entries = os.scandir(path)
            attrs[""] = PosixAttrs.from_stat(os.stat(path))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such directory: {path}") from None
        with entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(entry.name)
                elif stat.S_ISREG(st.st_mode):
                    full = os.path.join(path, entry.name)
                    files.append(
                        ObjectInfo(
                            "file://" + full, "file://", full, st.st_size, _version(st), st.st_mtime
                        )
                    )
                else:
                    continue
                attrs[entry.name] = PosixAttrs.from_stat(st)
        return dirs, files, attrs

    async def listdir_posix(
        self, url: str
    ) -> tuple[list[str], list[ObjectInfo], dict[str, PosixAttrs]]:
        """The scandir listing: every entry's mode, owner and mtime come with it."""
        ORIGIN_REQUESTS.labels("list").inc()
        return await self._run(self._listdir_posix_sync, self._path(url))

    async def set_posix(self, url: str, attrs: PosixAttrs) -> ObjectInfo | None:
        """chmod/chown/utime the file or directory; EPERM if this process may not."""
        path = self._path(url)
        ORIGIN_REQUESTS.labels("put").inc()
        try:
            await self._run(self._apply_sync, path, attrs, True)
        except FileNotFoundError:
            raise NotFound(f"no such object: {url}") from None
        return None if url.endswith("/") else await self.stat(url)

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

    async def rename_dir(
        self, src: str, dst: str, *, max_objects: int, parallel: int
    ) -> dict[str, ObjectInfo]:
        """A real ``rename``: atomic, and as cheap for any size of tree, so
        ``max_objects`` and ``parallel`` do not apply. Its ``OSError`` carries the errno
        (``ENOTEMPTY``, ``ENOTDIR``, ``EINVAL`` into itself). The files keep their
        versions; the walk of the moved tree only names them."""
        src_path, dst_path = self._path(src), self._path(dst)
        ORIGIN_REQUESTS.labels("copy").inc()
        try:
            await self._run(os.rename, src_path, dst_path)
        except FileNotFoundError:
            raise NotFound(f"no such directory: {src}") from None
        files = await self._run(self._list_sync, dst)
        return {os.path.relpath(info.key, dst_path): info for info in files}

    async def mkdir(self, url: str, posix: PosixAttrs | None = None) -> None:
        ORIGIN_REQUESTS.labels("put").inc()
        path = self._path(url)
        await self._run(os.mkdir, path)
        if posix is not None:
            await self._run(self._apply_sync, path, posix, False)

    async def rmdir(self, url: str) -> None:
        ORIGIN_REQUESTS.labels("delete").inc()
        await self._run(os.rmdir, self._path(url))
