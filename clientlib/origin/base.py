"""The small interface every origin (object storage backend) implements.

An origin answers three questions: what is this object now (:meth:`Origin.stat`), give me
these bytes of this version (:meth:`Origin.read`), and what is under this prefix
(:meth:`Origin.list`). ``read`` takes the version so that a changed object fails loudly
with :class:`VersionMismatch` instead of mixing two versions' bytes into one block.

A file system over an origin (mountd) also needs one level of a tree
(:meth:`Origin.listdir`) and the writes (:meth:`Origin.write`, :meth:`Origin.delete`,
:meth:`Origin.rename`, :meth:`Origin.rename_dir`, :meth:`Origin.mkdir`,
:meth:`Origin.rmdir`). Directories are key prefixes ending in ``/``; an origin without a
real directory (S3) keeps an empty marker object named after the prefix, the convention
of s3fs and rclone, and moves a directory object by object. The write methods are
optional: the defaults refuse with :class:`Forbidden`, so a read-only origin stays small.

POSIX attributes (:class:`PosixAttrs`: mode, owner, mtime) are optional too. S3 keeps
them in the object's user metadata with s3fs's keys (``x-amz-meta-mode``, ``-uid``,
``-gid``, ``-mtime``, all decimal; ``mode`` includes the file type bits), so s3fs and
ringcache mounts share them; ``file://`` keeps them as the file's real mode, owner and
mtime. Listings of S3 carry no user metadata: :meth:`Origin.listdir_posix` says what a
listing knows for free, :meth:`Origin.stat_posix` costs one HEAD.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import stat as stat_
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from clientlib.errors import Forbidden, OriginError, RingcacheError

__all__ = ["ObjectInfo", "Origin", "PosixAttrs", "Progress", "TooManyObjects"]

#: Called from a worker thread with the bytes an upload has sent so far (since the last
#: call; negative when a retry rewinds). It may block: that throttles the upload.
Progress = Callable[[int], None]

_POSIX_KEYS = ("mode", "uid", "gid", "mtime", "ctime", "atime")

T = TypeVar("T")


class TooManyObjects(RingcacheError):
    """A directory holds more objects than the caller let :meth:`Origin.rename_dir` move
    one by one; nothing was moved. Its errno, ``EXDEV``, is what makes ``mv(1)`` copy and
    delete the tree file by file itself."""

    errno = errno.EXDEV


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object version as the origin reports it; ``content_type`` is the origin's
    ``Content-Type`` when a stat returned it ("" when unknown: listings, files)."""

    url: str
    origin: str
    key: str
    size: int
    version: str
    mtime: float
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class PosixAttrs:
    """Mode, owner and times stored with an object; ``None`` is "not stored".

    ``mode`` is a whole ``st_mode`` (type bits included, as s3fs stores it: a symbolic
    link is ``S_IFLNK``, its target the object's body; a FIFO, socket or device an
    empty object of that type); ``extra`` is the object's other user metadata, kept so
    that rewriting the POSIX keys does not drop it.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: float | None = None
    extra: tuple[tuple[str, str], ...] = ()
    ctime: float | None = None
    atime: float | None = None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> PosixAttrs:
        """Parse S3 user metadata (keys without ``x-amz-meta-``); bad values are ignored."""
        lower = {k.lower(): v for k, v in meta.items()}

        def number(key: str, kind: type) -> object:
            try:
                return kind(lower[key]) if key in lower else None
            except ValueError:
                return None

        return cls(
            number("mode", int),  # type: ignore[arg-type]
            number("uid", int),  # type: ignore[arg-type]
            number("gid", int),  # type: ignore[arg-type]
            number("mtime", float),  # type: ignore[arg-type]
            tuple(sorted((k, v) for k, v in lower.items() if k not in _POSIX_KEYS)),
            number("ctime", float),  # type: ignore[arg-type]
            number("atime", float),  # type: ignore[arg-type]
        )

    @classmethod
    def from_stat(cls, st: object) -> PosixAttrs:
        return cls(
            st.st_mode,  # type: ignore[attr-defined]
            st.st_uid,  # type: ignore[attr-defined]
            st.st_gid,  # type: ignore[attr-defined]
            st.st_mtime,  # type: ignore[attr-defined]
            ctime=st.st_ctime,  # type: ignore[attr-defined]
            atime=st.st_atime,  # type: ignore[attr-defined]
        )

    def to_metadata(self) -> dict[str, str]:
        """S3 user metadata in s3fs's format: decimal ``mode``/``uid``/``gid``, and
        ``mtime``, ``ctime`` and ``atime`` as seconds (``sec`` or ``sec.nanoseconds``)."""
        meta = dict(self.extra)
        if self.mode is not None:
            meta["mode"] = str(self.mode)
        if self.uid is not None:
            meta["uid"] = str(self.uid)
        if self.gid is not None:
            meta["gid"] = str(self.gid)
        for key, value in (("mtime", self.mtime), ("ctime", self.ctime), ("atime", self.atime)):
            if value is not None:
                sec, frac = divmod(round(value * 1e9), 10**9)
                meta[key] = f"{sec}.{frac:09d}" if frac else str(sec)
        return meta

    @property
    def perm(self) -> int | None:
        """The permission bits of ``mode`` (``None`` if no mode is stored)."""
        return None if self.mode is None else stat_.S_IMODE(self.mode)


class Origin(abc.ABC):
    """An object store reachable by URL. Implementations are safe to share across tasks."""

    def check(self, url: str) -> None:  # noqa: B027 - most origins allow every URL
        """Raise now if this origin would refuse ``url`` (cheap: no request, at most a
        local path lookup)."""

    @abc.abstractmethod
    async def stat(self, url: str) -> ObjectInfo:
        """Size and version tag of the object at ``url``; :class:`NotFound` if absent."""

    @abc.abstractmethod
    async def read(
        self, url: str, offset: int, length: int, version: str, *, size: int | None = None
    ) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``url`` at ``version``.

        Raises :class:`VersionMismatch` when the object is no longer at ``version`` or,
        if ``size`` is given, is not ``size`` bytes long: a node checks the size a
        request claims, since the block's length follows from it.
        """

    async def read_into(
        self, url: str, offset: int, buf: memoryview, version: str, *, size: int | None = None
    ) -> None:
        """Fill ``buf`` with bytes ``[offset, offset+len(buf))`` of ``url`` at ``version``,
        with the checks of :meth:`read`.

        For a caller that reuses one buffer for block after block (a node warming its
        cache): a fresh buffer per block costs a page fault per page, and a copy if the
        bytes must then sit in an aligned buffer to be written with ``O_DIRECT``. This
        default copies what :meth:`read` returns; an origin that can receive into the
        buffer overrides it.
        """
        data = await self.read(url, offset, len(buf), version, size=size)
        if len(data) != len(buf):
            raise OriginError(f"origin returned {len(data)} bytes of {url}, not {len(buf)}")
        buf[:] = data

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
        """:meth:`read_into`, then the blocking ``then()`` (not called if the read
        fails); its result. An origin that receives the bytes a part at a time may call
        ``progress(received)`` on the receiving thread as they come (the bytes so far in
        ``buf``, not checked yet); this default does not.

        For what a caller does next with the bytes on a thread anyway (a node writing the
        block to its disk): an origin that receives them on a worker thread (S3) calls
        ``then`` right there, which saves a hop back to the event loop and out to another
        thread per block. This default reads, then runs ``then`` on a worker thread.
        """
        await self.read_into(url, offset, buf, version, size=size)
        return await asyncio.to_thread(then)

    @abc.abstractmethod
    async def list(self, url: str) -> list[ObjectInfo]:
        """All objects whose URL starts with ``url`` (a prefix), recursively."""

    async def listdir(
        self, url: str, max_keys: int | None = None
    ) -> tuple[list[str], list[ObjectInfo]]:
        """One level under the directory ``url`` (ending in ``/``): subdirectory names and
        the objects directly in it, at most ``max_keys`` of them together (all if None).

        This default filters the recursive :meth:`list`; backends override it with a
        listing that does not walk the whole subtree.
        """
        prefix = url if url.endswith("/") else url + "/"
        dirs: set[str] = set()
        files: list[ObjectInfo] = []
        for info in await self.list(prefix):
            rest = info.url[len(prefix) :]
            head, sep, _ = rest.partition("/")
            if sep:
                dirs.add(head)
            elif rest:
                files.append(info)
        names = sorted(dirs)
        if max_keys is not None:
            return names[:max_keys], files[: max(0, max_keys - len(names))]
        return names, files

    async def stat_posix(self, url: str) -> tuple[ObjectInfo, PosixAttrs]:
        """:meth:`stat` and the object's stored POSIX attributes, in one request."""
        return await self.stat(url), PosixAttrs()

    async def dir_posix(self, url: str) -> PosixAttrs:
        """The stored POSIX attributes of the directory ``url`` (ending in ``/``)."""
        return PosixAttrs()

    async def listdir_posix(
        self, url: str
    ) -> tuple[list[str], list[ObjectInfo], dict[str, PosixAttrs]]:
        """:meth:`listdir` plus the POSIX attributes the listing gives for free, by name
        (``""`` is the directory itself); a name missing from the dict is unknown."""
        dirs, files = await self.listdir(url)
        return dirs, files, {}

    async def set_posix(self, url: str, attrs: PosixAttrs) -> ObjectInfo | None:
        """Store ``attrs`` as the POSIX attributes of ``url`` (a directory if it ends in
        ``/``); the object's new version (``None`` for a directory)."""
        raise Forbidden(f"{type(self).__name__} cannot change the attributes of {url}")

    async def write(
        self,
        url: str,
        path: Path,
        *,
        posix: PosixAttrs | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Store the whole file at ``path`` as the object ``url``; its new version.

        ``posix``: attributes to store with it; ``progress``: see :data:`Progress`.
        """
        raise Forbidden(f"{type(self).__name__} cannot write {url}")

    async def delete(self, url: str) -> None:
        """Remove the object ``url``; :class:`NotFound` if absent."""
        raise Forbidden(f"{type(self).__name__} cannot delete {url}")

    async def rename(self, src: str, dst: str) -> ObjectInfo:
        """Move the object ``src`` to ``dst`` (replacing it); the version at ``dst``."""
        raise Forbidden(f"{type(self).__name__} cannot rename {src}")

    async def rename_dir(
        self, src: str, dst: str, *, max_objects: int, parallel: int
    ) -> dict[str, ObjectInfo]:
        """Move the directory ``src`` and everything under it to ``dst`` (both ending in
        ``/``); ``dst`` must not exist or be an empty directory (callers check, as for
        :meth:`rmdir`), and must not be inside ``src``.

        An origin without a directory rename copies each object (markers included), at
        most ``parallel`` at a time, and deletes the sources only once every copy is
        made: a failure leaves ``src`` whole. Such an origin raises
        :class:`TooManyObjects`, before it copies anything, when ``src`` holds more than
        ``max_objects`` objects. Returns the files now under ``dst`` by their name
        relative to it, with their versions there (a copy may be a new version).
        """
        raise Forbidden(f"{type(self).__name__} cannot rename {src}")

    async def mkdir(self, url: str, posix: PosixAttrs | None = None) -> None:
        """Create the directory ``url`` (ending in ``/``), with ``posix`` if given."""
        raise Forbidden(f"{type(self).__name__} cannot create {url}")

    async def rmdir(self, url: str) -> None:
        """Remove the empty directory ``url`` (ending in ``/``); callers check emptiness."""
        raise Forbidden(f"{type(self).__name__} cannot remove {url}")

    def close(self) -> None:  # noqa: B027 - optional hook, most origins hold nothing
        """Release pooled connections or threads."""
