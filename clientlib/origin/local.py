"""``file://`` origin: a local or shared directory, the embedded default.

The version tag is ``<size>-<mtime_ns>``: cheap to read, and changed by every write.
Writes replace a file atomically (a temporary file beside it, then ``rename``), and
the directory methods are the real ``mkdir``/``rmdir``, whose ``OSError`` carries the
errno a file system caller wants (``EEXIST``, ``ENOTEMPTY``).
Only regular files are objects: a directory, FIFO or device named as one is
:class:`NotFound`, and none is ever opened blocking (``O_PATH`` or ``O_NONBLOCK``, then
``fstat`` on that fd).

A node serving file:// URLs for remote clients opens only files under its configured
roots (``allowed_roots``), or the cache would be a way to read any file on the node. A URL
belongs to a root by its path as written (the roots are the real paths the node resolved
at start), and every operation on a node opens its path beneath an fd of that root, held
from first use on, with :func:`~clientlib.origin.beneath.open_beneath`: what is opened is
exactly the path that was checked, however the tree changes in between, and a read checks
the version on the fd it reads. No symlink under a root is followed, not even one that
stays inside it: a token's scope is a URL prefix, and an in-root symlink would lead from
one scope into another. On a node such a symlink is :class:`NotFound` (a client then
reads the file itself) and listings leave symlinks out. Clients (``allowed_roots=None``)
open paths as any program does, following symlinks.
POSIX attributes are the files' own: ``set_posix`` is ``chmod``/``chown``/``utime``
(note that a new mtime is a new version tag).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clientlib.errors import BadRequest, Forbidden, NotFound, VersionMismatch
from clientlib.metrics import ORIGIN_BYTES, ORIGIN_REQUESTS
from clientlib.origin.base import ObjectInfo, Origin, PosixAttrs, Progress
from clientlib.origin.beneath import open_beneath, split_relative
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
        # The deepest root first, so a path is opened beneath the nearest root holding it.
        self._roots = (
            None
            if allowed_roots is None
            else sorted((p.resolve() for p in allowed_roots), key=lambda p: -len(p.parts))
        )
        self._executor = executor
        self._root_fds: dict[Path, int] = {}
        self._root_lock = threading.Lock()

    def _path(self, url: str) -> Path:
        origin, key = split_url(url)
        if origin != "file://":
            raise BadRequest(f"not a file:// URL: {url[:200]!r}")
        if self._roots is not None:
            self._beneath(key)
        return Path(key)

    def _beneath(self, key: str) -> tuple[Path, str]:
        """The root holding the path ``key`` and the path below it, compared component by
        component as written: nothing is resolved here (:meth:`_open` does it safely)."""
        assert self._roots is not None
        try:
            parts = split_relative(key.lstrip("/"))
        except ValueError:
            raise BadRequest(f"file path {key[:200]!r} is not normalised") from None
        for root in self._roots:
            depth = len(root.parts) - 1
            if tuple(parts[:depth]) == root.parts[1:]:
                return root, "/".join(parts[depth:])
        raise Forbidden(f"'file://{key[:200]}' is outside this node's file roots")

    def _root_fd(self, root: Path) -> int:
        """An ``O_PATH`` fd of ``root``, opened at first use and held for this origin's
        life (never closed: a closed fd's number could come back naming another file)."""
        with self._root_lock:
            fd = self._root_fds.get(root)
            if fd is None:
                fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self._root_fds[root] = fd
            return fd

    def _open(self, path: Path, flags: int) -> int:
        """An fd for ``path``: on a node beneath its root, through no symlink (one on the
        way is :class:`NotFound`); on a client by its path, as any program opens it."""
        if self._roots is None:
            return os.open(path, flags | os.O_CLOEXEC)
        root, rel = self._beneath(str(path))
        try:
            return open_beneath(self._root_fd(root), rel, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV):
                raise NotFound(f"{path} is not beneath {root} without a symlink") from None
            raise

    @contextlib.contextmanager
    def _opened(self, path: Path, flags: int) -> Iterator[int]:
        fd = self._open(path, flags)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _in_parent(self, path: Path) -> Iterator[tuple[int | None, str]]:
        """``(dir_fd, name)`` naming ``path`` for ``mkdir``, ``unlink``, ``rename`` and
        ``rmdir``, which act on the last component itself, never on what it links to: on
        a node its parent opened beneath the root, on a client ``(None, path)``."""
        if self._roots is None:
            yield None, str(path)
            return
        with self._opened(path.parent, os.O_PATH | os.O_DIRECTORY) as fd:
            yield fd, path.name

    @contextlib.contextmanager
    def _by_path(self, path: Path, flags: int = os.O_PATH) -> Iterator[Path]:
        """A path for calls that take only a path (``mkstemp``, ``chmod`` without read
        access) and still name what was opened: on a node ``/proc/self/fd/N`` of ``path``
        opened beneath its root (the kernel takes it to that very inode), on a client
        ``path`` itself."""
        if self._roots is None:
            yield path
            return
        with self._opened(path, flags) as fd:
            yield Path(f"/proc/self/fd/{fd}")

    def _regular(self, path: Path, url: str) -> os.stat_result:
        """The stat of the regular file ``path``, by an ``O_PATH`` fd (a FIFO or device is
        not opened for I/O); :class:`NotFound` if absent or anything else."""
        try:
            with self._opened(path, os.O_PATH) as fd:
                st = os.fstat(fd)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such object: {url}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"not a regular file: {url}")
        return st

    def check(self, url: str) -> None:
        """Refuse a URL outside the roots and, on a node, one that names no regular file
        beneath its root. The latter is a path lookup by an ``O_PATH`` fd (no file is
        opened for I/O), so that a node refuses a directory or a symlink as a block's
        source with a clean 4xx before it sends the headers of a miss."""
        path = self._path(url)
        if self._roots is not None:
            self._regular(path, url)

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stat(self, url: str) -> ObjectInfo:
        path = self._path(url)
        ORIGIN_REQUESTS.labels("stat").inc()
        st = await self._run(self._regular, path, url)
        _, key = split_url(url)
        return ObjectInfo(url, "file://", key, st.st_size, _version(st), st.st_mtime)

    def _read_sync(
        self, path: Path, offset: int, length: int, version: str, size: int | None = None
    ) -> bytes:
        try:
            fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise VersionMismatch(f"{path} is gone") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"not a regular file: {path}")
            if _version(st) != version:
                raise VersionMismatch(f"{path} changed since version {version}")
            if size is not None and st.st_size != size:
                raise VersionMismatch(f"{path} is {st.st_size} bytes, not {size}")
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    async def read(
        self, url: str, offset: int, length: int, version: str, *, size: int | None = None
    ) -> bytes:
        path = self._path(url)
        ORIGIN_REQUESTS.labels("get").inc()
        data = await self._run(self._read_sync, path, offset, length, version, size)
        ORIGIN_BYTES.inc(len(data))
        return data

    def _list_sync(self, url: str) -> list[ObjectInfo]:
        _, key = split_url(url)
        base = self._path(url)
        out: list[ObjectInfo] = []
        try:
            fd = self._open(base, os.O_PATH)
        except (FileNotFoundError, NotADirectoryError, NotFound):
            return out
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                return [ObjectInfo(url, "file://", key, st.st_size, _version(st), st.st_mtime)]
            if stat.S_ISDIR(st.st_mode):
                self._walk_sync(fd, ".", str(base), out)
            return out
        finally:
            os.close(fd)

    def _walk_sync(self, at: int, name: str, path: str, out: list[ObjectInfo]) -> None:
        """Append the regular files under the directory ``name`` in ``at`` (whose path is
        ``path``) in ``os.walk``'s order. Directories are entered by name with
        ``O_NOFOLLOW``, so the walk never leaves the tree through a symlink (one to a file
        is listed on a client, left out on a node). Unreadable directories are skipped."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=at)
        except OSError:
            return
        follow = self._roots is None
        dirs: list[str] = []
        files: list[tuple[str, os.stat_result]] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            dirs.append(entry.name)
                        elif stat.S_ISREG((st := entry.stat(follow_symlinks=follow)).st_mode):
                            files.append((entry.name, st))
                    except FileNotFoundError:
                        continue
            for file, st in sorted(files, key=lambda f: f[0]):
                full = os.path.join(path, file)
                out.append(
                    ObjectInfo(
                        "file://" + full, "file://", full, st.st_size, _version(st), st.st_mtime
                    )
                )
            for sub in sorted(dirs):
                self._walk_sync(fd, sub, os.path.join(path, sub), out)
        finally:
            os.close(fd)

    async def list(self, url: str) -> list[ObjectInfo]:
        ORIGIN_REQUESTS.labels("list").inc()
        return await self._run(self._list_sync, url)

    @contextlib.contextmanager
    def _scandir(self, path: Path) -> Iterator[tuple[os.stat_result, Iterator[os.DirEntry[str]]]]:
        """The directory ``path`` (opened beneath the root on a node): its own stat and its
        entries; :class:`NotFound` if it is no directory."""
        try:
            fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such directory: {path}") from None
        try:
            with os.scandir(fd) as entries:
                yield os.fstat(fd), entries
        finally:
            os.close(fd)

    def _listdir_sync(self, path: Path, max_keys: int | None) -> tuple[list[str], list[ObjectInfo]]:
        dirs: list[str] = []
        files: list[ObjectInfo] = []
        follow = self._roots is None
        with self._scandir(path) as (_, entries):
            for entry in entries:
                if max_keys is not None and len(dirs) + len(files) >= max_keys:
                    break
                try:
                    if entry.is_dir(follow_symlinks=follow):
                        dirs.append(entry.name)
                    elif entry.is_file(follow_symlinks=follow):
                        st = entry.stat(follow_symlinks=follow)
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
        await self._run(self._write_beneath_sync, self._path(url), path, posix, progress)
        return await self.stat(url)

    def _write_beneath_sync(
        self, dest: Path, source: Path, posix: PosixAttrs | None, progress: Progress | None
    ) -> None:
        # On a node the directory is the one opened beneath the root (see _by_path): the
        # temporary file is made in it and renamed within it, by name.
        with self._by_path(dest.parent, os.O_PATH | os.O_DIRECTORY) as parent:
            self._write_sync(parent / dest.name, source, posix, progress)

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
        if attrs.mtime is not None or attrs.atime is not None:
            mtime = os.stat(target).st_mtime_ns if attrs.mtime is None else round(attrs.mtime * 1e9)
            atime = mtime if attrs.atime is None else round(attrs.atime * 1e9)
            os.utime(target, ns=(atime, mtime))

    async def stat_posix(self, url: str) -> tuple[ObjectInfo, PosixAttrs]:
        path = self._path(url)
        ORIGIN_REQUESTS.labels("stat").inc()
        st = await self._run(self._regular, path, url)
        _, key = split_url(url)
        info = ObjectInfo(url, "file://", key, st.st_size, _version(st), st.st_mtime)
        return info, PosixAttrs.from_stat(st)

    async def dir_posix(self, url: str) -> PosixAttrs:
        ORIGIN_REQUESTS.labels("stat").inc()
        try:
            return PosixAttrs.from_stat(await self._run(self._stat_sync, self._path(url)))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such directory: {url}") from None

    def _stat_sync(self, path: Path) -> os.stat_result:
        with self._opened(path, os.O_PATH) as fd:
            return os.fstat(fd)

    def _listdir_posix_sync(
        self, path: Path
    ) -> tuple[list[str], list[ObjectInfo], dict[str, PosixAttrs]]:
        dirs: list[str] = []
        files: list[ObjectInfo] = []
        attrs: dict[str, PosixAttrs] = {}
        follow = self._roots is None
        with self._scandir(path) as (own, entries):
            attrs[""] = PosixAttrs.from_stat(own)
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=follow)
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
            await self._run(self._set_posix_sync, path, attrs, True)
        except FileNotFoundError:
            raise NotFound(f"no such object: {url}") from None
        return None if url.endswith("/") else await self.stat(url)

    def _set_posix_sync(self, path: Path, attrs: PosixAttrs, strict: bool) -> None:
        with self._by_path(path) as target:
            self._apply_sync(target, attrs, strict)

    def _unlink_sync(self, path: Path) -> None:
        with self._in_parent(path) as (at, name):
            os.unlink(name, dir_fd=at)

    def _rmdir_sync(self, path: Path) -> None:
        with self._in_parent(path) as (at, name):
            os.rmdir(name, dir_fd=at)

    def _mkdir_sync(self, path: Path, posix: PosixAttrs | None) -> None:
        with self._in_parent(path) as (at, name):
            os.mkdir(name, dir_fd=at)
        if posix is not None:
            self._set_posix_sync(path, posix, False)

    def _rename_sync(self, src: Path, dst: Path) -> None:
        with self._in_parent(src) as (src_at, src_name), self._in_parent(dst) as (at, name):
            os.replace(src_name, name, src_dir_fd=src_at, dst_dir_fd=at)

    async def delete(self, url: str) -> None:
        ORIGIN_REQUESTS.labels("delete").inc()
        try:
            await self._run(self._unlink_sync, self._path(url))
        except FileNotFoundError:
            raise NotFound(f"no such object: {url}") from None

    async def rename(self, src: str, dst: str) -> ObjectInfo:
        ORIGIN_REQUESTS.labels("copy").inc()
        try:
            await self._run(self._rename_sync, self._path(src), self._path(dst))
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
            await self._run(self._rename_sync, src_path, dst_path)
        except FileNotFoundError:
            raise NotFound(f"no such directory: {src}") from None
        files = await self._run(self._list_sync, dst)
        return {os.path.relpath(info.key, dst_path): info for info in files}

    async def mkdir(self, url: str, posix: PosixAttrs | None = None) -> None:
        ORIGIN_REQUESTS.labels("put").inc()
        await self._run(self._mkdir_sync, self._path(url), posix)

    async def rmdir(self, url: str) -> None:
        ORIGIN_REQUESTS.labels("delete").inc()
        await self._run(self._rmdir_sync, self._path(url))
