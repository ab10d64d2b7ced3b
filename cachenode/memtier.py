"""The memory tier of a node's store: verified copies of hot blocks, kept in memory.

Serving a hot block from memory saves what a hit from disk costs on every serve: for a
small block the open, read and close, for a large one the read and the hash of every byte
that proves the file still holds the block. The tier holds copies only: the store asks it
after its index lookup, so an evicted block is never served from here.

What it promises (``docs/security.md``, "What a node serves"):

- A block enters only as the bytes of a whole-block check against the index's checksum,
  made by the store when it read the file; a large one only at its second whole-block
  hit while its first is still remembered, and the tier remembers the first hits of
  only as many bytes of large blocks as it holds (:meth:`MemoryTier.admits`). A stream
  through a file larger than the tier hits each block once, and copying each into a new
  copy that nobody asks for again cost the node more than sending it: whole-block reads
  of such a stream took 1,555-1,779 us of the machine's CPU per MB without the copy
  against 2,412-2,570 with it. The same holds for a file larger than the tier read
  again and again (every job of a backtest streaming the same years of bars): a block
  read again only after more than the tier's size of other blocks would have left an
  LRU tier before its next hit, so its copy would be made on every pass and never
  served. Blocks read again sooner than that (a hot set that fits) are admitted.
- A small block (one the store reads inline) is kept as a ``bytes`` object, which
  nothing can change. Neither it nor a large block's copy is hashed again while it is
  served from here. (Hashing a 64 KiB block on every hit was 2% of a hot node's samples
  in py-spy, for a check that only a flipped bit in RAM could fail, as it could in a
  copy.)
- A large block is copied into a **pinned copy** (:func:`_pinned_copy`) and served from it
  with ``sendfile``: an unnamed file (``O_TMPFILE | O_EXCL``) in the file system of the
  block's cache dir, written once, whose pages are locked in memory (``mlock`` on a
  read-only shared mapping) until it leaves the tier. ``sendfile`` from its page cache
  (the file system's large folios) costs less than from a memfd's 4 KiB shmem pages.
  The store has it made in its pool (:meth:`MemoryTier.keep_copy`): a write to a disk's
  file system can block, for tens of ms under heavy writes, and the event loop must not.

  - Its bytes never come from the disk again: a locked page is never dropped from the
    page cache. The kernel writes the pages to the disk (once, about 30 s after the
    copy; a copy dropped sooner is never written) and never reads them back.
  - No process can open it by a name: it has none and can never get one. The only way
    to it is the node's own fd, through ``/proc/<pid>/fd``, open to the node's user and
    to root only; they can already change the node's block files and memory
    (``docs/security.md``, "Out of scope"). Unlike a sealed memfd, such a process
    could write into it (no seal exists for a file on a disk's file system): the
    recheck below hashes the copy itself, so such a change is never served past
    ``recheck_after``.
  - While kept it takes its size in that file system (which the store's free-space
    check counts), and its locked pages count against ``RLIMIT_MEMLOCK``.
- Where a pinned copy cannot be made, the copy is a **sealed memfd** (no process can
  change, grow or shrink it after the copy), as it always was: when the process may not
  lock the tier's capacity (no ``CAP_IPC_LOCK`` and too small an ``RLIMIT_MEMLOCK``: said
  once at start), or from the first pinned copy that fails (a file system without
  ``O_TMPFILE``, no room: said once then). A memfd's pages are shared memory, which the
  kernel may move to swap where swap is on; a serve then reads them back from the swap
  device. Such a copy asks for huge pages (``MADV_HUGEPAGE``), which the kernel grants
  when ``/sys/kernel/mm/transparent_hugepage/shmem_enabled`` is ``advise``,
  ``within_size`` or ``always``; with ``never`` (a common default) the copy has 4 KiB
  pages and the node says so once at start.
- An entry is served for at most ``recheck_after`` seconds after its check; then the
  next serve reads the file and checks it again, so a block that rotted on disk
  meanwhile is caught within that time. A small block's entry is dropped then. A large
  block's copy is kept if the file still checks and the copy's own bytes still match the
  checksum (:meth:`MemoryTier.keep_copy`), else made anew, so a flipped bit in the copy
  is caught within that time too. Keeping it spares the disk a write of every hot block
  at every recheck.
- Least recently used entries leave first, by bytes, and a large block's copy also when
  ``max_copies`` copies are kept: each holds an open file, and the node's other files
  (block files being sent, client connections) must keep the rest of its
  ``RLIMIT_NOFILE``.
- :meth:`MemoryTier.close` closes (and unmaps) every copy; an entry whose file failed a
  check is dropped (:meth:`MemoryTier.drop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import resource
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future
from functools import partial
from pathlib import Path
from typing import NamedTuple

from cachetools import LRUCache

from clientlib.blockfile import BlockFile, block_checksum

__all__ = ["MemoryTier", "may_pin", "shmem_huge_pages"]

log = logging.getLogger(__name__)

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
#: The share of the process's open-file limit the tier's sealed copies may hold.
COPIES_SHARE = 4
#: Where the kernel says whether shared memory (a memfd) may use transparent huge pages.
SHMEM_HUGE_SETTING = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


def shmem_huge_pages() -> str:
    """The kernel's setting for huge pages in shared memory (the bracketed word of
    :data:`SHMEM_HUGE_SETTING`), or ``"unknown"`` where it cannot be read."""
    try:
        text = SHMEM_HUGE_SETTING.read_text()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else "unknown"


def default_max_copies() -> int:
    """Sealed copies the tier may keep open: a quarter of ``RLIMIT_NOFILE``'s soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft // COPIES_SHARE)


class _Entry(NamedTuple):
    checksum: int
    checked_at: float
    nbytes: int
    data: bytes | None  # a small block's bytes
    fd: int  # a large block's copy (a pinned file or a sealed memfd), else -1
    pinned: int  # the address of a pinned copy's locked mapping, else 0


class _Entries:
    """Entries by block id, least recently used first, at most ``maxsize`` bytes of them;
    an entry's copy is closed (and unmapped) when the entry leaves, and the copies held are
    counted.

    An ``OrderedDict`` rather than ``cachetools.LRUCache``: a hit's lookup here is one
    C-level ``get`` and ``move_to_end``, where ``LRUCache.get`` takes five Python calls,
    on a path that a hot node runs tens of thousands of times a second.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.currsize = 0
        self.copies = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> _Entry | None:
        """The entry of ``key``, now the most recently used; None if there is none."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def peek(self, key: str) -> _Entry | None:
        """The entry of ``key``, its place in the order left as it is."""
        return self._entries.get(key)

    def put(self, key: str, entry: _Entry) -> None:
        """Keep ``entry`` (of at most ``maxsize`` bytes) for ``key``, dropping the least
        recently used entries to make room."""
        self.pop(key)
        while self._entries and self.currsize + entry.nbytes > self.maxsize:
            self.popitem()
        self._entries[key] = entry
        self.currsize += entry.nbytes
        if entry.fd >= 0:
            self.copies += 1

    def renew(self, key: str, checked_at: float) -> None:
        """Mark the entry of ``key`` as checked at ``checked_at``, keeping its copy."""
        self._entries[key] = self._entries[key]._replace(checked_at=checked_at)
        self._entries.move_to_end(key)

    def pop(self, key: str) -> None:
        """Drop the entry of ``key``, if any."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.currsize -= entry.nbytes
        if entry.fd >= 0:
            self.copies -= 1
            _release(entry.fd, entry.pinned, entry.nbytes)

    def popitem(self) -> None:
        """Drop the least recently used entry."""
        self.pop(next(iter(self._entries)))

    def clear(self) -> None:
        """Drop every entry."""
        while self._entries:
            self.popitem()


def _sealed_copy(block_id: str, data: bytes | bytearray | memoryview) -> int:
    """A sealed memfd holding exactly ``data``, in huge pages where the kernel grants them
    (the copy is written through a mapping: only a mapping can ask for them)."""
    fd = os.memfd_create(f"ringcache-{block_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        nbytes = len(data)
        os.ftruncate(fd, nbytes)
        if nbytes:
            with mmap.mmap(fd, nbytes) as mapped:
                with contextlib.suppress(OSError):  # a kernel without transparent huge pages
                    mapped.madvise(mmap.MADV_HUGEPAGE)
                mapped[:] = data
        # The mapping is gone: F_SEAL_WRITE fails while a writable one exists.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _pinned_copy(where: str, data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """An unnamed file in ``where``'s file system holding exactly ``data`` (not empty),
    its pages locked in memory through a read-only shared mapping: (fd, the mapping's
    address).

    ``O_TMPFILE | O_EXCL``: the file has no name and can never be given one, so no
    process can open it but through this process's fd. It is written with ``write``, so
    its page cache gets the file system's large folios, from which ``sendfile`` costs
    less than from a memfd's 4 KiB shmem pages. ``mlock`` keeps every page resident:
    the page cache never drops them, so they are never read back from the disk (write
    back of them to the disk happens, and changes nothing in memory).
    """
    # O_NOATIME: a serve need not update the access time of a file nobody can see.
    flags = os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC | os.O_NOATIME
    fd = os.open(where, flags, 0o400)
    try:
        view, nbytes, done = memoryview(data).cast("B"), len(data), 0
        while done < nbytes:
            done += os.pwrite(fd, view[done:], done)
        address = _libc.mmap(None, nbytes, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address == _MAP_FAILED:
            raise _libc_error("mmap")
        if _libc.mlock(address, nbytes) != 0:
            exc = _libc_error("mlock")
            _libc.munmap(address, nbytes)
            raise exc
    except BaseException:
        os.close(fd)
        raise
    return fd, address


class _CopyMismatch(Exception):
    """A pinned copy's bytes did not match the block's checksum."""


def _pinned_copy_of(where: str, source: bytes | int, nbytes: int, checksum: int) -> tuple[int, int]:
    """A pinned copy (:func:`_pinned_copy`) of ``source``: bytes, or an open block file
    (closed here) whose first ``nbytes`` are read; made in a pool. The copy's own pages
    are then hashed: :class:`_CopyMismatch` unless they match ``checksum``."""
    if isinstance(source, int):
        try:
            data = os.pread(source, nbytes, 0)
        finally:
            os.close(source)
    else:
        data = source
    if len(data) != nbytes:
        raise _CopyMismatch(f"{len(data)} bytes read, not {nbytes}")
    fd, address = _pinned_copy(where, data)
    if _pinned_checksum(address, nbytes) != checksum:
        _release(fd, address, nbytes)
        raise _CopyMismatch("the copy's bytes do not match the block's checksum")
    return fd, address


def _pinned_checksum(address: int, nbytes: int) -> int:
    return block_checksum(memoryview((ctypes.c_char * nbytes).from_address(address)))


def _release(fd: int, pinned: int, nbytes: int) -> None:
    """Unmap a pinned copy's locked mapping (``pinned``, if not 0) and close the copy."""
    if pinned:
        _libc.munmap(pinned, nbytes)
    os.close(fd)


def _libc_error(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def _copy_checksum(entry: _Entry) -> int:
    """The checksum of the bytes a large block's copy holds now."""
    if entry.pinned:
        return _pinned_checksum(entry.pinned, entry.nbytes)
    with mmap.mmap(entry.fd, entry.nbytes, prot=mmap.PROT_READ) as mapped:
        return block_checksum(mapped)


#: The bit of ``CAP_IPC_LOCK`` in ``/proc/self/status``'s ``CapEff`` (``linux/capability.h``).
CAP_IPC_LOCK = 14


def may_pin(nbytes: int) -> bool:
    """Whether this process may lock ``nbytes`` of memory: it has ``CAP_IPC_LOCK``, or its
    ``RLIMIT_MEMLOCK`` allows that much."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= nbytes:
        return True
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    return False


class _Making(NamedTuple):
    """A pinned copy being made in a pool."""

    job: Future[tuple[int, int]]  # (fd, address), as :func:`_pinned_copy` returns
    nbytes: int
    kept: asyncio.Future[None]  # done once the copy is kept (or given up)


class MemoryTier:
    """Verified copies of blocks, at most ``capacity`` bytes of them (LRU) and at most
    ``max_copies`` copies of large ones (default :func:`default_max_copies`), each served
    for at most ``recheck_after`` seconds after its check.

    A large block's copy is a pinned file (:func:`_pinned_copy`) when the process may
    lock ``capacity`` bytes (:func:`may_pin`), else a sealed memfd; the tier says which
    once, at start, and if a pinned copy cannot be made it makes sealed memfds from then
    on, and says so once.

    Used on the event loop thread only.
    """

    def __init__(self, capacity: int, recheck_after: float, max_copies: int | None = None) -> None:
        self._blocks = _Entries(max(capacity, 1))
        self._recheck_after = recheck_after
        self._max_copies = default_max_copies() if max_copies is None else max_copies
        # First whole-block hits of large blocks: id -> size, sizes up to the capacity.
        self._seen: LRUCache[str, int] = LRUCache(max(capacity, 1), getsizeof=int)
        #: Pinned copies being made in a pool, by block id (:meth:`keep_copy`).
        self._making: dict[str, _Making] = {}
        self._pin = capacity > 0 and may_pin(capacity)
        if capacity > 0 and not self._pin:
            log.info(
                "memory tier: copies of large blocks are sealed memfds, not pinned files: "
                "locking %d bytes needs RLIMIT_MEMLOCK room or CAP_IPC_LOCK",
                capacity,
            )
            if (huge := shmem_huge_pages()) in ("never", "deny"):
                log.info(
                    "memory tier: sealed memfds get 4 KiB pages (%s is %r); 'advise' makes "
                    "sending them cheaper",
                    SHMEM_HUGE_SETTING,
                    huge,
                )

    @property
    def pins(self) -> bool:
        """Whether large blocks' copies are made as pinned files (else sealed memfds)."""
        return self._pin

    def _entry(self, block_id: str, checksum: int) -> _Entry | None:
        """The block's entry if it is for ``checksum`` and checked recently enough. A
        large block's copy due for a check stays, for :meth:`keep_copy` to renew."""
        entry = self._blocks.get(block_id)
        if entry is None:
            return None
        if entry.checksum != checksum:
            self._blocks.pop(block_id)  # another version of the block
            return None
        if time.monotonic() - entry.checked_at > self._recheck_after:
            if entry.fd < 0:
                self._blocks.pop(block_id)  # due for a check against the file
            return None
        return entry

    def get(self, block_id: str, checksum: int) -> bytes | None:
        """A small block's bytes if they are here for ``checksum`` (the index's)."""
        entry = self._entry(block_id, checksum)
        return None if entry is None else entry.data

    def open(self, block_id: str, checksum: int) -> BlockFile | None:
        """A large block's verified copy, open for ``sendfile``, if it is here for
        ``checksum``; the caller owns the returned fd (the tier may drop its own)."""
        entry = self._entry(block_id, checksum)
        if entry is None or entry.fd < 0:
            return None
        return BlockFile(os.dup(entry.fd), entry.nbytes)

    def keep(self, block_id: str, checksum: int, data: bytes | bytearray | memoryview) -> bytes:
        """Keep a small block's bytes just checked against ``checksum`` (if they fit);
        return them as bytes."""
        data = bytes(data)
        if self.fits(len(data)):
            self._blocks.put(block_id, _Entry(checksum, time.monotonic(), len(data), data, -1, 0))
        return data

    def fits(self, nbytes: int) -> bool:
        """Whether a block of ``nbytes`` can be kept here at all."""
        return nbytes < self._blocks.maxsize

    def admits(self, block_id: str, nbytes: int) -> bool:
        """Whether a large block of ``nbytes`` being hit whole should be copied here now:
        when it fits and this is its second hit while its first is remembered, or its
        copy here is due for a check (:meth:`keep_copy`).

        A first hit is only remembered, and forgotten once first hits of the tier's
        capacity in other large blocks came after it: a block read again only after
        more than the tier holds (a scan of a file larger than the tier, repeated) would
        be evicted before its next hit, its copy made on every pass and never served."""
        if not self.fits(nbytes) or block_id in self._making:
            return False
        if self._blocks.peek(block_id) is not None:
            return True
        if self._seen.pop(block_id, None) is not None:
            return True
        self._seen[block_id] = nbytes
        return False

    def keep_copy(
        self,
        block_id: str,
        checksum: int,
        data: bytes | bytearray | memoryview,
        where: str,
        pool: Executor | None = None,
        file: BlockFile | None = None,
    ) -> asyncio.Future[None] | None:
        """Keep a copy of a large block's bytes just checked against ``checksum``, if
        they fit; a pinned copy goes in ``where``'s file system (the block's cache dir).

        With ``pool``, a pinned copy is made there: a write to a disk's file system can
        block (ext4 has no ``RWF_NOWAIT`` for it), and this runs on the event loop. It
        is made from ``file`` (the checked file, which the caller keeps: the pool reads
        a duplicate of it) if given, else from ``data`` (which must then not change: a
        ``bytes``, or a buffer the caller does not reuse), and kept only if its own
        bytes match ``checksum``. The returned future is done once it is kept (or given
        up; :meth:`making` gives it too). Else, and for a sealed memfd, the copy is made
        now, from ``data``.

        A copy already here for ``checksum`` (one due for a check, whose file was just
        checked) is kept and marked checked if its own bytes still match ``checksum``:
        a new pinned copy is a file whose pages the kernel writes to the disk once, and
        a hot set rechecked every minute would be written again every minute.
        """
        nbytes = len(data)
        if not self.fits(nbytes) or block_id in self._making:
            return None
        now = time.monotonic()
        if (old := self._blocks.peek(block_id)) is not None:
            if old.fd >= 0 and old.checksum == checksum and _copy_checksum(old) == checksum:
                self._blocks.renew(block_id, now)
                return None
            self._blocks.pop(block_id)
        if self._pin and pool is not None:
            try:
                source = os.dup(file.fd) if file is not None else bytes(data)
            except OSError as exc:
                log.warning("block %s not kept in memory: %s", block_id, exc)
                return None
            loop = asyncio.get_running_loop()
            job = pool.submit(_pinned_copy_of, where, source, nbytes, checksum)
            making = _Making(job, nbytes, loop.create_future())
            self._making[block_id] = making
            made = partial(self._made, block_id, checksum, now, making)
            job.add_done_callback(lambda _: loop.call_soon_threadsafe(made))
            return making.kept
        try:
            fd, pinned = self._copy(block_id, data, where)
        except OSError as exc:
            log.warning("block %s not kept in memory: %s", block_id, exc)
            return None
        self._put_copy(block_id, _Entry(checksum, now, nbytes, None, fd, pinned))
        return None

    def making(self, block_id: str) -> asyncio.Future[None] | None:
        """A future done once the block's copy being made in a pool is kept (or given
        up), if one is being made (shield it: it is shared)."""
        making = self._making.get(block_id)
        return None if making is None else making.kept

    def _made(self, block_id: str, checksum: int, checked_at: float, making: _Making) -> None:
        """Keep the pinned copy ``making`` made, unless the tier was closed meanwhile
        (:meth:`close` has then closed it). If it could not be made, the block is not
        kept this time, and copies are sealed memfds from now on."""
        if self._making.get(block_id) is not making:
            return
        del self._making[block_id]
        try:
            fd, pinned = making.job.result()
        except _CopyMismatch as exc:
            log.warning("block %s not kept in memory: %s", block_id, exc)
        except OSError as exc:
            self._no_more_pins(block_id, exc)
        else:
            entry = _Entry(checksum, checked_at, making.nbytes, None, fd, pinned)
            self._put_copy(block_id, entry)
        finally:
            making.kept.set_result(None)

    def _put_copy(self, block_id: str, entry: _Entry) -> None:
        """Keep a large block's new copy, dropping the least recently used entries while
        ``max_copies`` are kept."""
        self._blocks.pop(block_id)
        while self._blocks.copies >= self._max_copies:
            self._blocks.popitem()
        self._blocks.put(block_id, entry)

    def _copy(self, block_id: str, data: bytearray | memoryview, where: str) -> tuple[int, int]:
        """A new copy of ``data``: pinned in ``where`` if the tier pins, else (or if that
        fails, from now on) a sealed memfd; (fd, the pinned mapping's address or 0)."""
        if self._pin:
            try:
                return _pinned_copy(where, data)
            except OSError as exc:
                self._no_more_pins(block_id, exc)
        return _sealed_copy(block_id, data), 0

    def _no_more_pins(self, block_id: str, exc: OSError) -> None:
        """A pinned copy could not be made: make sealed memfds from now on, and say so."""
        if self._pin:
            self._pin = False
            log.warning(
                "memory tier: block %s's copy cannot be pinned (%s); copies of large "
                "blocks are sealed memfds from now on",
                block_id,
                exc,
            )

    def drop(self, block_id: str) -> None:
        """Drop the block's entry, if any (its file failed a check)."""
        self._blocks.pop(block_id)

    def close(self) -> None:
        """Drop every entry, closing every copy, those still being made included (this
        waits for them)."""
        making, self._making = self._making, {}
        for job, nbytes, kept in making.values():
            with contextlib.suppress(OSError, _CopyMismatch):
                _release(*job.result(), nbytes)
            if not kept.done():
                kept.set_result(None)
        self._blocks.clear()
