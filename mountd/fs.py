"""The FUSE operations of the mount (pyfuse3, asyncio mode): this module and nothing else.

Each operation turns into calls on the inode table (:mod:`mountd.inodes`), the readers
(:mod:`mountd.prefetch`), the files open for writing (:mod:`mountd.writers`) and the
origin; :mod:`mountd.operation` turns every failure into an errno and bounds each call.
The kernel enforces modes and owners (``default_permissions``) with the attributes it
was given; an S3 entry known only from a listing has the mount's defaults, so the
operations that grant access check the caller again against the stored attributes
(:mod:`mountd.access`), fetching them (one HEAD) if needed. chmod, chown and utime are
stored in the origin (:meth:`Origin.set_posix`). Symbolic links and special files are
objects the way s3fs stores them: a link's body is its target, and the type is in the
stored mode (:class:`PosixAttrs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import stat
import tempfile
import time
from pathlib import Path

import pyfuse3

from clientlib.client import CacheClient
from clientlib.errors import RingcacheError
from clientlib.origin import ObjectInfo, Origin
from clientlib.origin.base import PosixAttrs
from clientlib.urls import MAX_KEY_BYTES, split_url
from mountd.access import SETID, R, W, X, allowed, changed_attrs, check_change
from mountd.config import MountConfig
from mountd.handles import DirHandle, FileHandle
from mountd.inodes import (
    NAME_MAX,
    NO_POSIX,
    ROOT_INODE,
    Attr,
    Inode,
    InodeTable,
    child_path,
    kernel_name,
    parent_of,
)
from mountd.operation import Deadlines, operation
from mountd.prefetch import BlockFetcher, FileReader
from mountd.spool import Spool
from mountd.throttle import Throttle
from mountd.writers import Writers

__all__ = ["RingcacheFS"]

log = logging.getLogger(__name__)

#: Most objects a directory rename moves. S3 has no directory rename: each object is a
#: server-side copy and a delete, so one rename(2) would take time and requests in
#: proportion to the tree, without progress and beyond interruption. Larger trees get
#: EXDEV, and mv(1) copies and deletes them file by file, as it would across devices.
MAX_RENAME_OBJECTS = 10_000
#: Server-side copies (then deletes) in flight during a directory rename: a few hundred
#: files take seconds, not minutes, and the origin's pool of 32 connections keeps room for
#: the reads of other files meanwhile.
RENAME_PARALLEL = 16

#: Longest symbolic link target plus its NUL (Linux's PATH_MAX).
PATH_MAX = 4096

XATTR_SOURCE = b"user.ringcache.source"
XATTR_VERSION = b"user.ringcache.version"


class RingcacheFS(pyfuse3.Operations):
    """The mounted tree of ``config.source``, read through ``client``."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        config: MountConfig,
        client: CacheClient,
        fetcher: BlockFetcher,
        upload: Throttle | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.client = client
        self.fetcher = fetcher
        self.upload = upload
        self.origin: Origin = client.origin(config.url(""))
        self.inodes = InodeTable(config, self.origin)
        self._handles: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self.writers = Writers(config, self.inodes, fetcher)
        self._next_fh = 1
        self.deadlines = Deadlines()

    # -- helpers ----------------------------------------------------------------------
    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    def _writable(self) -> None:
        if self.config.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _new_path(self, parent: Inode, name: bytes, is_dir: bool = False) -> str:
        """The path of a new entry ``name`` in ``parent``: ENAMETOOLONG if its S3 key (with
        the mount's prefix, and the ``/`` of a directory marker) would pass S3's limit of
        :data:`MAX_KEY_BYTES`."""
        path = child_path(parent.path, kernel_name(name))
        url = self.config.dir_url(path) if is_dir else self.config.url(path)
        if url.startswith("s3://") and len(url[5:].partition("/")[2].encode()) > MAX_KEY_BYTES:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        return path

    async def _put(self, path: str, body: bytes, posix: PosixAttrs) -> Inode:
        """Store the small object ``path`` (a symbolic link or special file) at once,
        with ``posix``; its inode, looked up once more for the kernel. S3 only: EPERM
        with a ``file://`` source."""
        url = self.config.url(path)
        if not url.startswith("s3://"):
            # A file:// origin writes regular files only (and its nodes follow no links).
            raise pyfuse3.FUSEError(errno.EPERM)
        with tempfile.NamedTemporaryFile(dir=self.config.spool_dir) as tmp:
            tmp.write(body)
            tmp.flush()
            info = await self.origin.write(url, Path(tmp.name), posix=posix)
        self.client.forget(url)
        node = self.inodes.ensure(path, Attr.of(info), posix)
        node.checked = time.monotonic()
        self.inodes.set_entry(path, node.attr)
        node.lookups += 1
        return node

    def _object(self, node: Inode) -> ObjectInfo:
        url = self.config.url(node.path)
        origin, key = split_url(url)
        a = node.attr
        return ObjectInfo(url, origin, key, a.size, a.version, a.mtime)

    def _committed(self, node: Inode, info: ObjectInfo) -> None:
        node.attr = Attr.of(info)
        node.checked = time.monotonic()
        node.cached_version = info.version
        self.inodes.set_entry(node.path, node.attr)
        self.client.forget(info.url)

    @staticmethod
    def _upload_posix(node: Inode) -> PosixAttrs:
        """What an upload of ``node`` stores: its stored attributes, with the mtime set
        with utime since the last write or else now, and the ctime of its last change
        or else now (to the nanosecond, unlike S3's LastModified)."""
        p = node.posix or NO_POSIX
        now = time.time()
        return dataclasses.replace(
            p,
            mtime=now if p.mtime is None else p.mtime,
            ctime=now if p.ctime is None else p.ctime,
        )

    async def _check(self, node: Inode, ctx: pyfuse3.RequestContext, want: int) -> None:
        """EACCES unless the caller has ``want`` (R|W|X) on ``node`` by its stored
        attributes (:func:`mountd.access.allowed`). Root passes (the kernel has checked
        the rest)."""
        if ctx.uid == 0:
            return
        await self.inodes.fetch_posix(node)
        if not allowed(ctx, *self.inodes.perms(node), want):
            raise pyfuse3.FUSEError(errno.EACCES)

    async def _commit(self, spool: Spool, node: Inode) -> None:
        """Upload ``spool``; any failure is EIO to the writer (ENOSPC stays ENOSPC)."""
        known = node.posix
        posix = self._upload_posix(node)
        try:
            info = await spool.commit(self.origin, self.fetcher, posix, self.upload)
        except OSError as exc:
            log.error("upload of %s failed: %s", spool.url, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except RingcacheError as exc:
            log.error("upload of %s failed: %s", spool.url, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if info is not None:
            self._committed(node, info)
            if node.posix is known:  # no chmod/chown/utime meanwhile
                self.inodes.set_posix(node, posix)

    # -- tree -------------------------------------------------------------------------
    @operation()
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, X)
        node = await self.inodes.lookup(parent, kernel_name(name))
        node.lookups += 1
        return self.inodes.attributes(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, nlookup in inode_list:
            self.inodes.forget(ino, nlookup)

    @operation()
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.inodes.refresh(self.inodes.get(inode), posix=True)
        return self.inodes.attributes(node)

    @operation()
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        node = self.inodes.get(inode)
        if fields.update_size:
            await self._truncate(node, attr.st_size)
        if (
            fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_mtime
            or fields.update_atime
        ):
            await self._set_posix(node, attr, fields, ctx)
        return self.inodes.attributes(node)

    async def _set_posix(
        self,
        node: Inode,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """chmod, chown, utime: stored in the origin (S3 user metadata, or the file's
        own attributes), so every mount and s3fs see them."""
        await self.inodes.fetch_posix(node)
        perm, uid, gid = self.inodes.perms(node)
        if need := check_change(ctx, perm, uid, gid, attr, fields):
            await self._check(node, ctx, need)
        old = node.posix or NO_POSIX
        new = changed_attrs(old, node.attr.is_dir, perm, uid, gid, attr, fields, time.time())
        if node.ino == ROOT_INODE:
            pass  # the root's attributes are this mount's (a bucket has none)
        elif self.writers.local_only(node):
            pass  # the upload at close stores them
        elif node.attr.is_dir:
            await self.origin.set_posix(self.config.dir_url(node.path), new)
        else:
            info = await self.origin.set_posix(self.config.url(node.path), new)
            if info is not None:
                # Same bytes (a metadata copy may still change the ETag): the page cache
                # stays valid, and later opens read the new version.
                self._committed(node, info)
        if node.attr.is_dir:
            self.inodes.keep_dir_posix(node, new)
        else:
            self.inodes.set_posix(node, new)

    async def _truncate(self, node: Inode, size: int) -> None:
        if node.attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self.inodes.fetch_posix(node)  # the upload must keep them
        spool = self.writers.get(node.ino)
        if spool is not None:
            await spool.truncate(size)
            node.attr.size = size
            self.inodes.modified(node)
            return
        if size == node.attr.size and size > 0:
            return
        self.inodes.modified(node)
        spool = await self.writers.open(node, self._object(node), truncate=size == 0)
        try:
            if size:
                await spool.truncate(size)
            else:
                spool.dirty = True
            await self._commit(spool, node)
        finally:
            self.writers.close(node)

    @operation()
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.inodes.get(inode)
        if not node.attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        listing = await self.inodes.listing(node.path)  # may tell the dir's own attributes
        await self._check(node, ctx, R)
        fh = self._fh()
        self._dirs[fh] = DirHandle(node, sorted(listing.entries.items()), listing.posix)
        return fh

    @operation()
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        for index in range(start_id, len(handle.entries)):
            name, attr = handle.entries[index]
            node = self.inodes.ensure(
                child_path(handle.node.path, name), attr, handle.posix.get(name)
            )
            if not pyfuse3.readdir_reply(
                token, name.encode(), self.inodes.attributes(node), index + 1
            ):
                self.inodes.forget(node.ino, 0)
                return
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @operation()
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # Object storage has no fixed capacity: report a large, constant free space so
        # tools that check before writing (cp, rsync, pandas) go ahead.
        s = pyfuse3.StatvfsData()
        s.f_bsize = 1024 * 1024
        s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 2**50 // s.f_frsize
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = NAME_MAX
        return s

    @operation()
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.inodes.get(inode)
        if name == XATTR_SOURCE:
            url = self.config.dir_url(node.path) if node.attr.is_dir else self.config.url(node.path)
            return url.encode()
        if name == XATTR_VERSION and not node.attr.is_dir and node.attr.version:
            return node.attr.version.encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @operation()
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self.inodes.get(inode)
        return [XATTR_SOURCE] if node.attr.is_dir else [XATTR_SOURCE, XATTR_VERSION]

    @operation()
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @operation()
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- reading and writing ------------------------------------------------------------
    @operation()
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if node.attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if writing:
            self._writable()
        if node.ino not in self.writers:
            # Close-to-open consistency: a file opened after the TTL sees the new version.
            # A writer needs the stored attributes too: the upload must keep them.
            await self.inodes.refresh(node, posix=writing)
        if node.posix is None:
            await self.inodes.fetch_posix(node)  # its type: a listing does not tell it
        if self.inodes.kind(node) != stat.S_IFREG:
            # The kernel took a link or special file known from a listing (readdirplus)
            # for a regular file. ESTALE makes it look the name up again and retry the
            # open with the real type, instead of reading the object's body as data.
            raise pyfuse3.FUSEError(errno.ESTALE)
        want = {os.O_RDONLY: R, os.O_WRONLY: W}.get(flags & os.O_ACCMODE, R | W)
        await self._check(node, ctx, want)
        handle = FileHandle(node, drop_setid=writing and ctx.uid != 0)
        keep_cache = False
        if writing:
            handle.spool = await self.writers.open(
                node, self._object(node), truncate=bool(flags & os.O_TRUNC)
            )
        elif node.ino not in self.writers:
            handle.reader = FileReader(
                self.fetcher, self._object(node), self.config.prefetch_blocks
            )
            keep_cache = node.cached_version == node.attr.version
            node.cached_version = node.attr.version
        node.opens += 1
        fh = self._fh()
        self._handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    @operation()
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, W | X)
        path = self._new_path(parent, name)
        node = self.inodes.ensure(path, Attr(False, 0, time.time(), ""))
        if node.attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        # A new file is the caller's, with the mode it asked for (umask applied by the
        # kernel); the upload at close stores them with the object.
        self.inodes.set_posix(node, PosixAttrs(stat.S_IFREG | stat.S_IMODE(mode), ctx.uid, ctx.gid))
        spool = await self.writers.open(node, self._object(node), truncate=True)
        self.inodes.set_entry(path, node.attr)
        self.inodes.touch(parent)
        node.lookups += 1
        node.opens += 1
        fh = self._fh()
        self._handles[fh] = FileHandle(node, spool=spool)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.inodes.attributes(node)

    @operation()
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handles[fh]
        spool = self.writers.get(handle.node.ino)
        if spool is not None:
            return spool.read(off, size)
        if handle.reader is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await handle.reader.read(off, size)

    @operation(timed=False)  # waits out an upload of the same file, which has its own
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if handle.spool is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        written = await handle.spool.write(off, buf)
        node = handle.node
        node.attr.size = handle.spool.size
        self.inodes.modified(node)
        p = node.posix
        if handle.drop_setid and p is not None and p.mode is not None:
            # What the kernel does on a write by another user than root, whatever the
            # attributes it holds (a listing's defaults may not show these bits).
            kill = p.mode & (SETID if p.mode & stat.S_IXGRP else stat.S_ISUID)
            if kill:
                node.posix = dataclasses.replace(p, mode=p.mode & ~kill)
        return written

    @operation(timed=False)
    async def flush(self, fh: int) -> None:
        handle = self._handles[fh]
        if handle.spool is not None:
            await self._commit(handle.spool, handle.node)

    @operation(timed=False)
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.flush(fh)

    @operation(timed=False)
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        if handle.reader is not None:
            handle.reader.close()
        if handle.spool is not None:
            spool = handle.spool
            if spool.refs == 1 and spool.dirty and not spool.detached:
                # The writer ignored close()'s error, or never called flush: last chance.
                try:
                    await self._commit(spool, handle.node)
                except pyfuse3.FUSEError:
                    log.error("changes to %s are lost: the upload failed at release", spool.url)
            self.writers.close(handle.node)
        self.inodes.release(handle.node)

    # -- changing the tree ----------------------------------------------------------------
    @operation()
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, W | X)
        path = self._new_path(parent, name, is_dir=True)
        now = time.time()
        posix = PosixAttrs(stat.S_IFDIR | stat.S_IMODE(mode), ctx.uid, ctx.gid, now, ctime=now)
        await self.origin.mkdir(self.config.dir_url(path), posix)
        node = self.inodes.ensure(path, Attr(True, 0, now))
        self.inodes.keep_dir_posix(node, posix)
        self.inodes.set_entry(path, node.attr)
        self.inodes.touch(parent)
        node.lookups += 1
        return self.inodes.attributes(node)

    @operation()
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A regular file is created empty; a FIFO, socket or device is an empty object
        with its type in the stored mode (and ``rdev`` in the metadata), as s3fs stores
        them. The kernel opens those itself: their data never reaches the mount."""
        self._writable()
        if stat.S_ISREG(mode):
            info, attrs = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
            await self.release(info.fh)
            return attrs
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, W | X)
        path = self._new_path(parent, name)
        now = time.time()
        extra = (("rdev", str(rdev)),) if rdev else ()
        posix = PosixAttrs(mode, ctx.uid, ctx.gid, now, extra, ctime=now)
        node = await self._put(path, b"", posix)
        self.inodes.touch(parent)
        return self.inodes.attributes(node)

    @operation()
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, W | X)
        node = await self.inodes.lookup(parent, kernel_name(name))
        if node.attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        spool = self.writers.get(node.ino)
        # An upload of the open file under way ends first: deleted, then put back, the
        # file would outlive its unlink.
        async with spool.lock if spool is not None else contextlib.nullcontext():
            if spool is not None:
                spool.detached = True
            if node.attr.version:  # not only a local file that was never uploaded
                url = self.config.url(node.path)
                await self.origin.delete(url)
                self.client.forget(url)
            self.inodes.removed(node.path)
        self.inodes.touch(parent)

    @operation()
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, W | X)
        node = await self.inodes.lookup(parent, kernel_name(name))
        if not node.attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not await self._empty(node):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        await self.origin.rmdir(self.config.dir_url(node.path))
        self.inodes.removed(node.path)
        self.inodes.touch(parent)

    async def _empty(self, node: Inode) -> bool:
        """Whether the directory ``node`` is empty in the origin now (not as listed up to
        ``attr_ttl`` ago) and has no file being written in it."""
        dirs, files = await self.origin.listdir(self.config.dir_url(node.path), max_keys=1)
        self.inodes.drop_listing(node.path)
        return not (dirs or files or (await self.inodes.listing(node.path)).entries)

    @operation(timed=False)
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old_parent = self.inodes.get(parent_inode_old)
        new_parent = self.inodes.get(parent_inode_new)
        async with asyncio.timeout(self.config.op_timeout):
            await self._check(old_parent, ctx, W | X)
            await self._check(new_parent, ctx, W | X)
            node = await self.inodes.lookup(old_parent, kernel_name(name_old))
            new_name = kernel_name(name_new)
            try:
                target: Inode | None = await self.inodes.lookup(new_parent, new_name)
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                target = None
        if target is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        dst_path = self._new_path(new_parent, name_new, is_dir=node.attr.is_dir)
        if node.attr.is_dir:
            if old_parent is not new_parent:
                await self._check(node, ctx, W)  # its ".." changes (the kernel's rule)
            await self._rename_dir(node, dst_path, target)
            self._renamed(old_parent, new_parent, node)
            return
        if target is not None and target.attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        spool = self.writers.get(node.ino)
        if spool is not None:
            # Upload what was written so far, under the old name, then move the object.
            await self._commit(spool, node)
        src = self.config.url(node.path)
        dst = self.config.url(dst_path)
        # No upload of the open file meanwhile: it would land at the old name. The kernel
        # holds the file's lock over a rename, so only a release retrying a failed close
        # (which holds no lock) can start one now.
        async with spool.lock if spool is not None else contextlib.nullcontext():
            info = await self.origin.rename(src, dst)
            self.client.forget(src)
            self.client.forget(dst)
            self.inodes.moved(node, dst_path)
            self._committed(node, info)
            if spool is not None:
                spool.url = dst
        self._renamed(old_parent, new_parent, node)

    def _renamed(self, old_parent: Inode, new_parent: Inode, node: Inode) -> None:
        """After a rename: both directories changed now, and so did the moved entry's
        ctime (kept by this mount, like the directories' times)."""
        self.inodes.touch(old_parent)
        self.inodes.touch(new_parent)
        self.inodes.changed(node)

    async def _rename_dir(self, node: Inode, dst_path: str, target: Inode | None) -> None:
        """Move the directory ``node`` and its tree to ``dst_path`` (Origin.rename_dir).

        Files under it that are open for writing make it ``EBUSY``, and no file under it
        may be opened for writing until it is done: an upload to the old name after its
        copy would be deleted with the old tree, or left behind. Committing those spools
        first would not stop the next write, so refusing is the safe choice; ``mv``
        reports the error and the writer is unaffected. Over ``MAX_RENAME_OBJECTS``
        objects it is ``EXDEV`` (nothing is copied), and a failed copy is ``EIO`` with
        the old tree whole.
        """
        if dst_path == node.path:
            return
        if dst_path.startswith(node.path + "/"):
            raise pyfuse3.FUSEError(errno.EINVAL)  # into its own subtree
        if target is not None:
            if not target.attr.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if not await self._empty(target):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        src, dst = self.config.dir_url(node.path), self.config.dir_url(dst_path)
        with self.writers.renaming(src):
            try:
                moved = await self.origin.rename_dir(
                    src, dst, max_objects=MAX_RENAME_OBJECTS, parallel=RENAME_PARALLEL
                )
            except BaseException:
                # Whatever the origin did before failing, neither tree's listing can be
                # trusted now; the kernel keeps the old names, which it still resolves.
                self.inodes.drop_listings(node.path)
                self.inodes.drop_listings(dst_path)
                self.inodes.drop_listing(parent_of(dst_path))
                raise
        self.inodes.moved_dir(node, dst_path)
        now = time.monotonic()
        for name, info in moved.items():
            self.client.forget(src + name)
            self.client.forget(info.url)
            child = self.inodes.find(child_path(dst_path, name))
            if child is not None and not child.attr.is_dir:
                child.attr, child.checked = Attr.of(info), now  # a copy is a new version

    @operation()
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """An object whose body is ``target``, with ``S_IFLNK`` in its stored mode (what
        s3fs reads as a link and writes for one)."""
        self._writable()
        parent = self.inodes.get(parent_inode)
        await self._check(parent, ctx, W | X)
        path = self._new_path(parent, name)
        now = time.time()
        posix = PosixAttrs(stat.S_IFLNK | 0o777, ctx.uid, ctx.gid, now, ctime=now)
        node = await self._put(path, target, posix)
        node.link = (node.attr.version, target)
        self.inodes.touch(parent)
        return self.inodes.attributes(node)

    @operation()
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self.inodes.refresh(self.inodes.get(inode), posix=True)
        if self.inodes.kind(node) != stat.S_IFLNK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if node.attr.size >= PATH_MAX:
            # No target is this long: refused before a byte of it is read or kept.
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if node.link is None or node.link[0] != node.attr.version:
            target = b""
            if node.attr.size:
                target = bytes(
                    await self.fetcher.get(self._object(node), 0, self.fetcher.block_size)
                )
            node.link = (node.attr.version, target)
        return node.link[1]

    @operation()
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        raise pyfuse3.FUSEError(errno.EPERM)  # an object has one name: no hard links

    # -- shutdown -----------------------------------------------------------------------
    async def flush_all(self) -> None:
        """Upload every spool with changes (SIGTERM with files still open for writing)."""
        for ino, spool in self.writers.items():
            node = self.inodes.find_ino(ino)
            try:
                posix = self._upload_posix(node) if node is not None else None
                info = await spool.commit(self.origin, self.fetcher, posix, self.upload)
                if info is not None and node is not None:
                    self._committed(node, info)
            except (RingcacheError, OSError) as exc:
                log.error("changes to %s are lost: upload at shutdown failed: %s", spool.url, exc)

    def __repr__(self) -> str:
        return f"RingcacheFS({self.config.source!r})"
