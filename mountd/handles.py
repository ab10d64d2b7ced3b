"""What an open file or directory of the mount holds, by its FUSE file handle."""

from __future__ import annotations

from dataclasses import dataclass

from clientlib.origin.base import PosixAttrs
from mountd.inodes import Attr, Inode
from mountd.prefetch import FileReader
from mountd.spool import Spool

__all__ = ["DirHandle", "FileHandle"]


@dataclass(slots=True)
class FileHandle:
    """An open file: its reader (opened to read) or its spool (opened to write)."""

    node: Inode
    reader: FileReader | None = None
    spool: Spool | None = None
    #: Opened for writing by a user other than root: a write clears setuid and setgid.
    drop_setid: bool = False


@dataclass(slots=True)
class DirHandle:
    """An open directory: the listing ``readdir`` pages through, taken at ``opendir``."""

    node: Inode
    entries: list[tuple[str, Attr]]
    posix: dict[str, PosixAttrs]
