"""The block store: a cache node's blocks as files on one or more cache dirs.

What it promises:

- **Never a wrong byte.** Every block is a block file (:mod:`clientlib.blockfile`) whose
  name carries its length and checksum, checked whenever it is read from the file (a range
  by the parts that hold it); a block that fails is deleted and reported as absent, so the
  caller fetches it again. A block served from the memory tier is a copy of such a check,
  at most ``memory_recheck`` seconds old (:mod:`cachenode.memtier`).
- **Atomic writes.** A block is written under ``<dir>/tmp/`` and renamed into place; the
  temp files a crash leaves are removed when the dir is opened.
- **One write per block.** Concurrent puts of one block share one write.
- **Bounded usage.** Each dir has a byte limit and its own eviction policy; a put evicts
  that dir's victims until the block fits and the disk keeps ``free_space_ratio`` free.
- **Fast restart.** A dir's index is rebuilt from its snapshot or its listings
  (:mod:`cachenode.cachedir`).
- **A failing dir is taken out**, and the others keep serving.

The index and the policies change only on the event loop thread. Blocking file work runs
in a small dedicated thread pool, except reads of small blocks (up to
:data:`INLINE_READ_MAX`), which are done inline: from the page cache that is much cheaper
than a hop to a pool thread. Hot blocks are also kept in memory (:mod:`cachenode.memtier`):
small ones as bytes, large ones as sealed copies that are sent with ``sendfile``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeAlias

import cachetools
import xxhash

from cachenode.cachedir import CacheDir, CacheDirSpec, unlink_quietly
from cachenode.eviction import DEFAULT_POLICY
from cachenode.memtier import MemoryTier
from clientlib import blockfile
from clientlib.blockfile import (
    BadBlockFile,
    BlockFile,
    block_checksum,
    block_filename,
    open_cached,
    open_or_read,
    read_part,
    read_verified,
)
from clientlib.blocks import MAX_BLOCK_SIZE, check_block_id
from clientlib.errors import BadRequest, ConfigError
from clientlib.singleflight import SingleFlight

# BlockFile, CacheDirSpec and block_filename live in clientlib.blockfile and
# cachenode.cachedir; they are named here too for the callers that import them from here.
__all__ = [
    "DEFAULT_MEMORY_RECHECK",
    "INLINE_READ_MAX",
    "BlockBytes",
    "BlockFile",
    "BlockPart",
    "BlockStore",
    "CacheDirSpec",
    "CachedBlock",
    "block_filename",
]

#: What :meth:`BlockStore.put_received` calls to receive a block: ``receive(write,
#: progress)``, see there.
Receive = Callable[[Callable[[], OSError | None], Callable[[int], None]], Awaitable[OSError | None]]

log = logging.getLogger(__name__)

#: Blocks up to this size are read and verified on the event loop thread; larger blocks
#: go to the pool, so that a read of a large block from a cold disk cannot stall every
#: other request.
INLINE_READ_MAX = 256 * 1024

#: Seconds a block is served from the memory tier before its file is checked again.
DEFAULT_MEMORY_RECHECK = 60.0

#: Threads for blocking file work; the disks, not the threads, are the limit.
_IO_THREADS = 4

#: Large blocks remembered as read whole from the disk past the page cache, so that the
#: next read of one goes through it (:meth:`BlockStore.open_block`).
_DIRECT_READS = 4096


class BlockBytes(NamedTuple):
    """A whole block's verified bytes (read to verify them, or from the memory tier)."""

    data: bytes | memoryview

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def close(self) -> None:
        """Nothing to release; here so that every :data:`CachedBlock` can be closed."""


class BlockPart(NamedTuple):
    """The verified bytes of the part of a block a caller asked for; ``nbytes`` is the
    whole block's length."""

    data: bytes
    nbytes: int

    def close(self) -> None:
        """Nothing to release; here so that every :data:`CachedBlock` can be closed."""


#: What :meth:`BlockStore.open_block` hands out: verified bytes of the whole block, of the
#: part asked for, or the open, verified file. Each has ``nbytes`` (the whole block's
#: length) and ``close()``.
CachedBlock: TypeAlias = BlockBytes | BlockPart | BlockFile


class _Found(NamedTuple):
    """Where an indexed block is: its dir, key, length, checksum and id (its file's path
    is made only when the file is opened: a hit from the memory tier never needs it)."""

    dir: CacheDir
    key: int
    nbytes: int
    checksum: int
    block_id: str

    @property
    def path(self) -> str:
        return self.dir.block_path(self.block_id, self.nbytes, self.checksum)

    @property
    def entry(self) -> tuple[int, int]:
        return self.nbytes, self.checksum


@functools.lru_cache(maxsize=4096)
def _key(block_id: str) -> int:
    """The index key of a block: its id as a 128-bit int (48 bytes, vs 64 for 16 bytes).

    Kept for the ids asked for most recently: a hot node asks for the same few blocks
    tens of thousands of times a second, and the check and the conversion were 1.2% of
    its event loop (py-spy, 64 KiB hits); a bad id raises every time (never kept).
    """
    return int(check_block_id(block_id), 16)


def _close_abandoned(job: asyncio.Future[BlockFile | memoryview | BadBlockFile]) -> None:
    """Close the file a pool job opened for a caller that was cancelled meanwhile."""
    if job.cancelled() or job.exception() is not None:
        return
    if isinstance(opened := job.result(), BlockFile):
        opened.close()


def _write_block(
    tmp_path: str, final_path: str, data: bytes | memoryview, doomed: list[str], direct: bool
) -> None:
    """Delete the files of the victims that made room, then write the block."""
    unlink_quietly(doomed)
    blockfile.write_block(tmp_path, final_path, data, direct=direct)


class BlockStore:
    """Blocks on one or more cache dirs, with their index, eviction and checksums.

    Blocks are placed by weighted rendezvous hashing of the id over the dirs that are up,
    weighted by dir size, so adding a dir moves only the blocks the new dir wins. Lookups
    check every dir, so blocks stay servable where they are after the set of dirs changes.

    :meth:`open` must be called before use and :meth:`close` after; methods run on one
    event loop. ``on_evict(nbytes)`` is called once per block that leaves to make room or
    through :meth:`evict` (not for blocks dropped because they were corrupt).
    ``policy`` names the eviction policy of every dir (:data:`cachenode.eviction.POLICIES`),
    ``memory_bytes`` sizes the memory tier (:mod:`cachenode.memtier`) and
    ``memory_recheck`` is how long, in seconds, a block is served from it before its file
    is checked again.
    """

    def __init__(
        self,
        dirs: Sequence[CacheDirSpec],
        *,
        free_space_ratio: float = 0.1,
        policy: str = DEFAULT_POLICY,
        on_evict: Callable[[int], None] | None = None,
        memory_bytes: int = 0,
        memory_recheck: float = DEFAULT_MEMORY_RECHECK,
    ) -> None:
        if not dirs:
            raise ConfigError("at least one cache dir is needed")
        if not 0.0 <= free_space_ratio < 1.0:
            raise ConfigError(f"free_space_ratio {free_space_ratio} must be in [0, 1)")
        self._dirs = [CacheDir(spec, policy, self._count_eviction) for spec in dirs]
        if len({d.root for d in self._dirs}) != len(self._dirs):
            raise ConfigError("a cache dir is listed twice")
        self._up: list[CacheDir] = []
        self._free_space_ratio = free_space_ratio
        self._on_evict = on_evict
        self._executor: ThreadPoolExecutor | None = None
        self._tmp_counter = itertools.count()
        self._puts: SingleFlight[int, bool] = SingleFlight("put of block")
        #: Blocks whose files are being deleted in the pool; a put of one waits for it.
        self._unlinking: dict[int, asyncio.Future[None]] = {}
        self._memory = MemoryTier(memory_bytes, memory_recheck)
        #: Where :meth:`read_now` checks large blocks: one buffer, reused, because a fresh
        #: large buffer costs a page fault per page on every hit.
        self._scratch = bytearray()
        #: Keys of large blocks last read whole past the page cache (:meth:`open_block`).
        self._direct_reads: cachetools.LRUCache[int, None] = cachetools.LRUCache(_DIRECT_READS)

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open every dir (see :meth:`CacheDir.open`). A dir that cannot be used is logged
        and left out; if none can, :class:`ConfigError` is raised."""
        if self._executor is not None:
            raise RuntimeError("BlockStore is already open")
        for d in self._dirs:
            try:
                others = [o.policy for o in self._dirs if o is not d and not o.down]
                d.open(self._free_space_ratio, others)
            except OSError as exc:
                log.error("cache dir %s cannot be used: %s", d.root, exc)
                d.down = True
            except BaseException:
                self._release_dirs()
                raise
        self._up = [d for d in self._dirs if not d.down]
        if not self._up:
            self._release_dirs()
            raise ConfigError("no cache dir could be opened; see the log for each one")
        self._executor = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="blockstore")
        log.info(
            "block store open: %d blocks, %d of %d bytes used in %d cache dirs",
            self.block_count,
            self.used_bytes,
            self.capacity_bytes,
            len(self._up),
        )

    def close(self) -> None:
        """Wait for file work in progress, save each dir's index snapshot, then release
        the dirs and the memory tier's copies."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            for d in self._up:
                d.save_snapshot()
        self._release_dirs()
        self._memory.close()

    def _release_dirs(self) -> None:
        for d in self._dirs:
            d.release()

    # -- queries -------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes of blocks stored in the dirs that are up."""
        return sum(d.policy.nbytes for d in self._up)

    @property
    def capacity_bytes(self) -> int:
        """Bytes the dirs that are up may hold (each dir's size, capped by its disk)."""
        return sum(d.limit for d in self._up)

    @property
    def block_count(self) -> int:
        """Blocks stored in the dirs that are up."""
        return sum(len(d.policy) for d in self._up)

    @property
    def putting(self) -> bool:
        """Whether a block is being stored."""
        return len(self._puts) > 0

    def __contains__(self, block_id: str) -> bool:
        """Whether the block is indexed; not a hit (does not change its eviction order)."""
        key = _key(block_id)
        return any(key in d.policy for d in self._up)

    def length(self, block_id: str) -> int | None:
        """The block's length in bytes if it is indexed (not a hit, no disk access)."""
        found = self._indexed(block_id)
        return None if found is None else found.nbytes

    def placement(self, block_id: str) -> list[Path]:
        """The dirs that are up, in the order a put of ``block_id`` would try them."""
        return [Path(d.root) for d in self._ranked(block_id)]

    # -- reads ---------------------------------------------------------------------------

    async def get(self, block_id: str) -> bytes | None:
        """The block's bytes, verified, counted as a hit; None if absent or bad.

        A file whose length or checksum is wrong is deleted, dropped from the index and
        logged; None tells the caller to fetch the block again.
        """
        found = self._find(block_id)
        if not isinstance(found, _Found):
            return None if found is None else found.data
        data = await self._read(found, block_id)
        return None if data is None else data.data

    async def open_block(
        self,
        block_id: str,
        *,
        read_max: int = INLINE_READ_MAX,
        part: tuple[int, int] | None = None,
    ) -> CachedBlock | None:
        """The block, verified and counted as a hit, ready to send; None if absent or bad.

        A block of at most ``read_max`` bytes comes as :class:`BlockBytes` (it was read
        to verify it anyway, and one write of head and body is cheaper than a
        ``sendfile`` of a few pages); a larger one as an open :class:`BlockFile`, verified
        in the pool and sent by the caller from the page cache, or, when it is not all in
        the page cache, as :class:`BlockBytes` read from the disk with ``O_DIRECT`` into a
        buffer of its own (:func:`~clientlib.blockfile.open_or_read`): a block streamed
        once does not fill the page cache. The next whole read of a block read so (among
        the last :data:`_DIRECT_READS`) goes through the page cache, where the hits after
        it find it; when the memory tier
        admits it (its second whole-block hit, :meth:`MemoryTier.admits`), the whole
        block is read, checked and copied there, and sent from that copy
        (:mod:`cachenode.memtier`). With ``part`` (bytes
        ``[start, stop)``) the caller sends only those bytes, and only the parts of the
        file holding them may have been checked: a :class:`BlockPart` when they are in the
        page cache (read on the event loop thread, no hop to the pool), else a
        :class:`BlockFile`. A bad file is handled as in :meth:`get`.
        """
        found = self._find(block_id)
        if not isinstance(found, _Found):
            return found
        if found.nbytes <= read_max:
            return await self._read(found, block_id)
        if (making := self._memory.making(block_id)) is not None:
            await asyncio.shield(making)
        if (kept := self._kept_copy(found)) is not None:
            return kept
        if part is None and self._memory.admits(block_id, found.nbytes):
            return await self._read_and_keep(found)
        loop = asyncio.get_running_loop()
        args = (found.path, found.nbytes, found.checksum)
        if part is not None:
            piece = read_part(found.path, found.nbytes, part, nowait=True)
            if piece is not None:
                found.dir.policy.touch(found.key)
                return BlockPart(piece, found.nbytes)
            job = loop.run_in_executor(self._pool(), blockfile.open_verified, *args, part)
        elif self._direct_reads.pop(found.key, False) is None:
            job = loop.run_in_executor(self._pool(), blockfile.open_verified, *args)
        else:
            job = loop.run_in_executor(self._pool(), open_or_read, *args)
        try:
            opened = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_close_abandoned)
            raise
        if isinstance(opened, BadBlockFile):
            self._drop_bad(found, block_id, opened)
            return None
        found.dir.policy.touch(found.key)
        if isinstance(opened, memoryview):
            self._direct_reads[found.key] = None
            return BlockBytes(opened)
        return opened

    def read_now(self, block_id: str) -> bytes | BlockFile | None:
        """The block, verified and counted as a hit, if that needs no wait for the disk.

        For the hit fast path (:mod:`cachenode.fasthits`), on the event loop thread: the
        file is read with ``RWF_NOWAIT``, which fails rather than block when any of it is
        out of the page cache. A small block comes back as its bytes (from the memory tier
        when it is there); a large one as an open, verified :class:`BlockFile`: its copy in
        the memory tier, or the file, which is then copied into the tier if it admits the
        block (:meth:`MemoryTier.admits`). None means "not now": absent, not all in
        memory, or not as indexed. The caller then takes :meth:`open_block`, which waits
        for the disk and deals with a bad file.

        A hit from the memory tier (most of a hot node's requests) is answered here in
        as few Python calls as it can be, each check kept: :meth:`_indexed`'s lookup is
        inline and no :class:`_Found` or :class:`BlockBytes` is made for it (py-spy put
        this method first among a 64 KiB hit's Python; each call saved counts about ten
        times its microbenchmark cost in a node whose caches the network work evicts).
        """
        key = _key(block_id)
        for d in self._up:
            if (entry := d.policy.lookup(key)) is not None:
                break
        else:
            return None
        nbytes, checksum = entry
        small = nbytes <= INLINE_READ_MAX
        if small:
            if (data := self._memory.get(block_id, checksum)) is not None:
                d.policy.touch(key)
                return data
        elif (kept := self._memory.open(block_id, checksum)) is not None:
            d.policy.touch(key)
            return kept
        elif self._memory.making(block_id) is not None:
            return None  # open_block waits for the copy being made
        if small:
            buf: bytearray | memoryview = bytearray(nbytes)
        else:
            if len(self._scratch) < nbytes:
                self._scratch = bytearray(nbytes)
            buf = memoryview(self._scratch)[:nbytes]
        opened = open_cached(d.block_path(block_id, nbytes, checksum), nbytes, checksum, buf)
        if opened is None:
            return None
        d.policy.touch(key)
        if not small:
            if self._memory.admits(block_id, nbytes):
                self._memory.keep_copy(block_id, checksum, buf, d.root, self._pool(), opened)
            return opened
        opened.close()
        return self._memory.keep(block_id, checksum, buf)

    def read_range_now(self, block_id: str, part: tuple[int, int]) -> bytes | BlockFile | None:
        """Bytes ``part`` (``[start, stop)``) of the block, verified and counted as a hit,
        if that needs no wait for the disk: for the fast path's range GETs, as
        :meth:`read_now` is for whole ones (None means "not now", and the caller then
        takes :meth:`open_block`, which waits for the disk and deals with a bad file).

        A small block is read whole (:meth:`read_now`) and sliced; a large one comes as
        its copy in the memory tier (the caller sends ``part`` of it), else as the bytes of
        ``part``, read with ``RWF_NOWAIT`` and checked against the trailer's parts that
        hold them (:func:`clientlib.blockfile.read_part`), the same check as
        :meth:`open_block` makes for a range. As there, a range does not copy the block
        into the memory tier.
        """
        found = self._indexed(block_id)
        if found is None:
            return None
        start, stop = part
        if found.nbytes <= INLINE_READ_MAX:
            whole = self.read_now(block_id)
            if whole is None:
                return None
            assert isinstance(whole, bytes)  # a small block comes as its bytes
            return whole[start:stop]
        if (kept := self._kept_copy(found)) is not None:
            return kept
        piece = read_part(found.path, found.nbytes, part, nowait=True)
        if piece is not None:
            found.dir.policy.touch(found.key)
        return piece

    async def _read_and_keep(self, found: _Found) -> BlockFile | BlockBytes | None:
        """A large block read whole and checked in the pool, then kept in the memory tier
        and sent from there (or as bytes if the tier could not take it); None if bad."""
        data = await asyncio.get_running_loop().run_in_executor(
            self._pool(), read_verified, found.path, found.nbytes, found.checksum
        )
        if isinstance(data, BadBlockFile):
            self._drop_bad(found, found.block_id, data)
            return None
        found.dir.policy.touch(found.key)
        made = self._memory.keep_copy(
            found.block_id, found.checksum, data, found.dir.root, self._pool()
        )
        if made is not None:
            await asyncio.shield(made)
        return self._memory.open(found.block_id, found.checksum) or BlockBytes(data)

    def _kept_copy(self, found: _Found) -> BlockFile | None:
        """A large block's copy from the memory tier, counted as a hit, if it is there."""
        if found.nbytes <= INLINE_READ_MAX:
            return None
        kept = self._memory.open(found.block_id, found.checksum)
        if kept is not None:
            found.dir.policy.touch(found.key)
        return kept

    def _indexed(self, block_id: str) -> _Found | None:
        """Where the block is, if a dir that is up indexes it (not a hit)."""
        key = _key(block_id)
        for d in self._up:
            entry = d.policy.lookup(key)
            if entry is not None:
                nbytes, checksum = entry
                return _Found(d, key, nbytes, checksum, block_id)
        return None

    def _find(self, block_id: str) -> _Found | BlockBytes | None:
        """The opening of every read: the block's bytes if the memory tier has them
        (counted as a hit), else where its file is; None if it is not indexed."""
        found = self._indexed(block_id)
        if found is None or found.nbytes > INLINE_READ_MAX:
            return found
        data = self._memory.get(block_id, found.checksum)
        if data is None:
            return found
        found.dir.policy.touch(found.key)
        return BlockBytes(data)

    async def _read(self, found: _Found, block_id: str) -> BlockBytes | None:
        """The block's verified bytes, read inline if small, else in the pool; counted
        as a hit. A bad file is dropped."""
        small = found.nbytes <= INLINE_READ_MAX
        args = (found.path, found.nbytes, found.checksum)
        if small:
            data = read_verified(*args)
        else:
            data = await asyncio.get_running_loop().run_in_executor(
                self._pool(), read_verified, *args
            )
        if isinstance(data, BadBlockFile):
            self._drop_bad(found, block_id, data)
            return None
        found.dir.policy.touch(found.key)
        if small:
            data = self._memory.keep(block_id, found.checksum, data)
        return BlockBytes(data)

    def _drop_bad(self, found: _Found, block_id: str, bad: BadBlockFile) -> None:
        """Handle a block file that could not be served."""
        d, path = found.dir, found.path
        if d.policy.lookup(found.key) != found.entry:
            return  # evicted (or replaced) while we read: a plain miss
        if bad.inode is None and os.path.exists(path):
            return  # the file was replaced while we read; the new one is fine
        log.warning("block %s in cache dir %s not served: %s; dropped", block_id, d.root, bad)
        d.policy.remove(found.key)
        self._memory.drop(block_id)  # a copy due for a check is not renewed
        if bad.inode is not None:
            try:
                if os.stat(path).st_ino == bad.inode:
                    os.unlink(path)
            except OSError as exc:
                log.warning("block %s in cache dir %s: cannot delete: %s", block_id, d.root, exc)
        if d.failed(bad.errno):
            self._mark_down(d, bad.reason)

    # -- writes --------------------------------------------------------------------------

    async def put(self, block_id: str, data: bytes | memoryview, *, direct: bool = False) -> bool:
        """Store a block; True once it is stored (or already was), False if it cannot be.

        ``data`` is read until the call returns, not after (unless it is cancelled): a
        caller may then reuse its buffer. With ``direct`` the block is written with
        ``O_DIRECT`` (:func:`~clientlib.blockfile.write_block`), from ``data`` itself when
        it is a page-aligned writable buffer (:mod:`cachenode.blockbuffers`): for a block
        nobody is reading now (a warmup), which then neither costs a copy into new page
        cache pages nor pushes out the pages hits are served from. Without, it goes
        through the page cache, where its first hit finds it (:mod:`cachenode.fasthits`).

        Tries the dirs in rendezvous order: a dir that fails is marked down and the next
        one is tried; a dir without room (ENOSPC, block larger than the dir, free space not
        reachable by evicting) is skipped. Each failure is logged. Concurrent puts of one
        block share one write, which continues even if its callers are cancelled, so the
        index never misses a file it wrote.
        """
        return await self._put_once(
            block_id, len(data), lambda key: self._put(block_id, key, data, direct)
        )

    async def put_received(
        self,
        block_id: str,
        buf: memoryview,
        receive: Receive,
    ) -> bool:
        """Store a block that is yet to arrive in ``buf`` (page-aligned and writable, as
        :meth:`put` with ``direct`` takes it; its length is the block's): for a block
        fetched from the origin.

        ``receive(write, progress)`` fills ``buf``, calling ``progress(received)`` as the
        bytes come (it writes them to the block's temporary file with ``O_DIRECT``,
        :class:`~clientlib.blockfile.StreamedBlockWrite`), and then calls the blocking
        ``write()`` on the thread that received the bytes
        (:meth:`Origin.read_into_then`), which writes the rest and renames the file: one
        job on one thread per block, where a fetch and then :meth:`put` cost a hop to
        the origin's thread, back, to the store's pool and back, and the block is stored
        a step's write after its last byte. The room for it is made before ``receive``
        starts.

        True once stored (or already stored, or being stored by another put, whose end
        it waits for: then ``receive`` may not be called at all); False if it cannot be,
        with the received bytes in ``buf``. Errors of ``receive`` propagate, and nothing
        is stored; a failed ``write`` is handled as in :meth:`put` (the next dir).
        """
        return await self._put_once(
            block_id, len(buf), lambda key: self._put_received(block_id, key, buf, receive)
        )

    async def _put_once(
        self, block_id: str, nbytes: int, store: Callable[[int], Awaitable[bool]]
    ) -> bool:
        """What every put does first: refuse a block larger than :data:`MAX_BLOCK_SIZE`,
        answer True for one already stored, else run ``store(key)`` once for the block's
        key, shared by concurrent puts of it (see :meth:`put`)."""
        key = _key(block_id)
        if nbytes > MAX_BLOCK_SIZE:
            raise BadRequest(f"block {block_id} of {nbytes} bytes exceeds {MAX_BLOCK_SIZE}")
        if key not in self._puts and any(key in d.policy for d in self._up):
            return True
        return await self._puts.run(key, lambda: store(key))

    async def _put_received(
        self,
        block_id: str,
        key: int,
        buf: memoryview,
        receive: Receive,
    ) -> bool:
        await self._unlinked(key)
        nbytes = len(buf)
        room = next(self._rooms(block_id, nbytes), None)
        if room is None:
            await receive(lambda: None, lambda received: None)
            if not self._up:
                log.error("block %s not stored: no cache dir is up", block_id)
            return False
        d, doomed = room
        doomed_paths = [path for _, path in doomed]
        checksums: list[int] = []  # the block's, once ``write`` has deleted the victims
        streamed = blockfile.StreamedBlockWrite(self._tmp_path(d, block_id), buf)
        failures: list[OSError] = []  # of the writes while the block arrives

        def progress(received: int) -> None:
            if failures:
                return
            if not checksums:  # the victims go before the first byte is written
                unlink_quietly(doomed_paths)
                checksums.append(0)
            try:
                streamed.advance(received)
            except OSError as exc:
                failures.append(exc)

        def write() -> OSError | None:
            unlink_quietly(doomed_paths)
            checksum = block_checksum(buf)
            checksums[:] = [checksum]
            if failures:
                streamed.abort()
                return failures[0]
            try:
                streamed.finish(d.block_path(block_id, nbytes, checksum))
            except OSError as exc:
                return exc
            return None

        # Puts of the victims wait until their old files are gone (see _track_unlinks).
        unlinked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._track_unlinks([key for key, _ in doomed], unlinked)
        d.reserved += nbytes
        try:
            failed = await receive(write, progress)
        except asyncio.CancelledError:
            raise  # the receiving thread runs on to ``write``, which ends the file itself
        except BaseException:
            # The receiving thread is done: remove what it wrote of the block.
            await asyncio.get_running_loop().run_in_executor(self._pool(), streamed.abort)
            raise
        finally:
            d.reserved -= nbytes
            if not checksums and doomed_paths:  # received nothing: make the room all the same
                await asyncio.get_running_loop().run_in_executor(
                    self._pool(), unlink_quietly, doomed_paths
                )
            unlinked.set_result(None)
        if failed is not None or d.down:
            if failed is not None:
                self._write_failed(d, block_id, failed)
            return await self._put(block_id, key, buf, True)  # the bytes are here: other dirs
        d.policy.insert(key, nbytes, checksums[0])
        return True

    async def _put(self, block_id: str, key: int, data: bytes | memoryview, direct: bool) -> bool:
        await self._unlinked(key)
        nbytes = len(data)
        loop = asyncio.get_running_loop()
        for d, doomed in self._rooms(block_id, nbytes):
            checksum = block_checksum(data)
            final = d.block_path(block_id, nbytes, checksum)
            tmp = self._tmp_path(d, block_id)
            doomed_paths = [path for _, path in doomed]
            job = loop.run_in_executor(
                self._pool(), _write_block, tmp, final, data, doomed_paths, direct
            )
            self._track_unlinks([key for key, _ in doomed], job)
            d.reserved += nbytes
            try:
                await job
            except OSError as exc:
                self._write_failed(d, block_id, exc)
                continue
            finally:
                d.reserved -= nbytes
            if d.down:
                continue  # marked down while we wrote; the file is lost with the dir
            d.policy.insert(key, nbytes, checksum)
            return True
        if not self._up:
            log.error("block %s not stored: no cache dir is up", block_id)
        return False

    async def _unlinked(self, key: int) -> None:
        """Wait until an old file of the block being deleted is gone."""
        unlinking = self._unlinking.get(key)
        if unlinking is not None:
            await asyncio.wait([unlinking])

    def _rooms(
        self, block_id: str, nbytes: int
    ) -> Iterator[tuple[CacheDir, list[tuple[int, str]]]]:
        """The dirs a put of the block tries, in rendezvous order, each with the victims
        evicted to make room in it (keys and paths of files still to delete); a dir is
        made room in only when the caller asks for it. A dir without room (block larger
        than the dir, free space not reachable by evicting) is skipped, one that fails
        is marked down; each is logged."""
        for d in self._ranked(block_id):
            if nbytes > d.limit:
                log.warning(
                    "block %s (%d bytes) is larger than cache dir %s (%d bytes)",
                    block_id,
                    nbytes,
                    d.root,
                    d.limit,
                )
                continue
            try:
                doomed = d.make_room(nbytes, self._free_space_ratio)
            except OSError as exc:
                self._write_failed(d, block_id, exc)
                continue
            if doomed is None:
                log.warning("block %s: no room in cache dir %s", block_id, d.root)
                continue
            yield d, doomed

    def _tmp_path(self, d: CacheDir, block_id: str) -> str:
        return f"{d.tmp}/{block_id}.{os.getpid()}.{next(self._tmp_counter)}.tmp"

    def _write_failed(self, d: CacheDir, block_id: str, exc: OSError) -> None:
        if d.failed(exc.errno):
            self._mark_down(d, f"{exc} (writing block {block_id})")
        else:
            log.warning("block %s not stored in cache dir %s: %s", block_id, d.root, exc)

    async def evict(self, block_ids: Iterable[str]) -> int:
        """Drop these blocks (all ids are checked first); return how many were stored.

        A put of one of them that is still being written is not affected.
        """
        keys = [(block_id, _key(block_id)) for block_id in block_ids]
        doomed: list[str] = []
        dropped: list[int] = []
        for block_id, key in keys:
            for d in self._up:
                entry = d.policy.remove(key)
                if entry is not None:
                    doomed.append(d.block_path(block_id, *entry))
                    dropped.append(key)
                    self._count_eviction(entry[0])
                    break
        if doomed:
            job = asyncio.get_running_loop().run_in_executor(self._pool(), unlink_quietly, doomed)
            self._track_unlinks(dropped, job)
            try:
                await job
            except OSError as exc:
                log.warning("deleting %d evicted block files failed: %s", len(doomed), exc)
        return len(dropped)

    def _track_unlinks(self, keys: list[int], job: asyncio.Future[None]) -> None:
        """Make puts of ``keys`` wait until ``job`` has deleted their old files.

        Otherwise a block evicted and put again at once could have its new file (same name:
        same id, length and checksum) deleted by the old eviction.
        """
        if not keys:
            return
        for key in keys:
            self._unlinking[key] = job

        def done(_: asyncio.Future[None]) -> None:
            for key in keys:
                if self._unlinking.get(key) is job:
                    del self._unlinking[key]

        job.add_done_callback(done)

    # -- placement and dir failure ---------------------------------------------------------

    def _ranked(self, block_id: str) -> list[CacheDir]:
        """Dirs that are up, best first, by weighted rendezvous hashing.

        Each dir scores ``-size / ln(u)`` with ``u`` uniform in (0, 1) from a hash of the id
        and the dir's path: a dir wins a share of ids proportional to its size, and adding
        a dir only takes ids away from the others, never moves them between old dirs.
        """
        if len(self._up) == 1:
            return list(self._up)
        raw = block_id.encode()

        def score(d: CacheDir) -> float:
            u = (xxhash.xxh3_64_intdigest(raw, seed=d.seed) + 0.5) / 2.0**64
            return -d.limit / math.log(u)

        return sorted(self._up, key=score, reverse=True)

    def _mark_down(self, d: CacheDir, reason: str) -> None:
        d.mark_down(reason)
        self._up = [x for x in self._dirs if not x.down]

    def _count_eviction(self, nbytes: int) -> None:
        if self._on_evict is not None:
            self._on_evict(nbytes)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            raise RuntimeError("BlockStore is not open")
        return self._executor
