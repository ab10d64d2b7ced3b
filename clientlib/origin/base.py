"""The small interface every origin (object storage backend) implements.

An origin answers three questions: what is this object now (:meth:`Origin.stat`), give me
these bytes of this version (:meth:`Origin.read`), and what is under this prefix
(:meth:`Origin.list`). ``read`` takes the version so that a changed object fails loudly
with :class:`VersionMismatch` instead of mixing two versions' bytes into one block.

A file system over an origin (mountd) also needs one level of a tree
(:meth:`Origin.listdir`) and the writes (:meth:`Origin.write`, :meth:`Origin.delete`,
:meth:`Origin.rename`, :meth:`Origin.mkdir`, :meth:`Origin.rmdir`). Directories are key
prefixes ending in ``/``; an origin without a real directory (S3) keeps an empty marker
object named after the prefix, the convention of s3fs and rclone. The write methods are
optional: the defaults refuse with :class:`Forbidden`, so a read-only origin stays small.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from clientlib.errors import Forbidden

__all__ = ["ObjectInfo", "Origin"]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object version as the origin reports it."""

    url: str
    origin: str
    key: str
    size: int
    version: str
    mtime: float


class Origin(abc.ABC):
    """An object store reachable by URL. Implementations are safe to share across tasks."""

    def check(self, url: str) -> None:  # noqa: B027 - most origins allow every URL
        """Raise now if this origin would refuse ``url`` (cheap, no I/O)."""

    @abc.abstractmethod
    async def stat(self, url: str) -> ObjectInfo:
        """Size and version tag of the object at ``url``; :class:`NotFound` if absent."""

    @abc.abstractmethod
    async def read(self, url: str, offset: int, length: int, version: str) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``url`` at ``version``.

        Raises :class:`VersionMismatch` when the object is no longer at ``version``.
        """

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

    async def write(self, url: str, path: Path) -> ObjectInfo:
        """Store the whole file at ``path`` as the object ``url``; its new version."""
        raise Forbidden(f"{type(self).__name__} cannot write {url}")

    async def delete(self, url: str) -> None:
        """Remove the object ``url``; :class:`NotFound` if absent."""
        raise Forbidden(f"{type(self).__name__} cannot delete {url}")

    async def rename(self, src: str, dst: str) -> ObjectInfo:
        """Move the object ``src`` to ``dst`` (replacing it); the version at ``dst``."""
        raise Forbidden(f"{type(self).__name__} cannot rename {src}")

    async def mkdir(self, url: str) -> None:
        """Create the directory ``url`` (ending in ``/``)."""
        raise Forbidden(f"{type(self).__name__} cannot create {url}")

    async def rmdir(self, url: str) -> None:
        """Remove the empty directory ``url`` (ending in ``/``); callers check emptiness."""
        raise Forbidden(f"{type(self).__name__} cannot remove {url}")

    def close(self) -> None:  # noqa: B027 - optional hook, most origins hold nothing
        """Release pooled connections or threads."""
