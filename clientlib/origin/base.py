"""The small interface every origin (object storage backend) implements.

An origin answers three questions: what is this object now (:meth:`Origin.stat`), give me
these bytes of this version (:meth:`Origin.read`), and what is under this prefix
(:meth:`Origin.list`). ``read`` takes the version so that a changed object fails loudly
with :class:`VersionMismatch` instead of mixing two versions' bytes into one block.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

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

    def close(self) -> None:  # noqa: B027 - optional hook, most origins hold nothing
        """Release pooled connections or threads."""
