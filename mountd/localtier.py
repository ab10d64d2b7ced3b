"""The on-disk local tier of one compute node (``mountd --local-cache``).

Whole blocks, one block file each (:mod:`clientlib.blockfile`, the format a cache node's
store uses too), under ``PATH/<id[:2]>/``. Because a block id includes the object's
version, a file here can never be stale, only evicted. A block that fails a check is
deleted and read again from the peers, never served; a random read takes only the parts
that hold its bytes. Writes go to a temporary name and are renamed into place, so a
crash leaves whole blocks or nothing. Whole blocks are read with ``O_DIRECT`` (a
sequential reader: the mount's own page cache keeps what a stream read, and filling a
second copy in the page cache was most of what a block cost here). A fetched block is
written with ``O_DIRECT`` too (``put(direct=True)``), from the buffer it was received
into: a buffered write copies it into freshly allocated page cache pages, and on a VM
that hands freed memory back to its host (virtio-balloon free page reporting, as on
this project's VM) the CPU's first touch of such a page costs a fault on the host:
up to 7,500 us of CPU per MiB written here, against under 60 direct
(``loadtest/results/mount.md``, sessions 6 and 7). A block pulled for random reads is
then read back into the page cache by the disk (``read_back``: ``POSIX_FADV_WILLNEED``,
no CPU copy), because those reads come right back for its other parts; left to the
disk, each first read of a part waited for it (session 5: 428 against 3,868 random
4 KiB reads a second; session 7: 0.7 ms a read). Eviction is LRU by bytes on disk,
with the index rebuilt from the directory (oldest access time first) at start;
files of an earlier layout are removed then. With a ``reserve`` (the default tier's,
:mod:`mountd.cachedir`), a write that would leave less than that share of the filesystem
free evicts this tier's least recently used blocks first, or is skipped: the tier never
fills the disk others use. The tier remembers which file versions streams went through
(the :data:`STREAMS_NAME` file): a stream stores its blocks only if an earlier one
through the same file has ended (:meth:`mountd.prefetch.BlockFetcher.stores_stream`).

The methods are blocking (disk I/O) and thread-safe; mountd calls them on a small
thread pool so the FUSE loop never waits on the disk, except :meth:`LocalTier.get_part_cached`,
which is the event loop's: it reads through a mapping of the block file (kept for the
most recently read blocks), only parts whose pages are all in the page cache
(``mincore``), and checks them against the trailer on every read, as the thread's reads do
(the trailer itself is read once a mapping: block files are never changed in place).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import mmap
import os
import re
import threading
from collections import OrderedDict, deque
from pathlib import Path

from cachetools import LRUCache

from clientlib.blockfile import (
    BadBlockFile,
    block_checksum,
    block_filename,
    file_length,
    open_if_cached,
    parse_name,
    part_span,
    range_in,
    read_direct,
    read_part,
    write_block,
)
from clientlib.blocks import BLOCK_ID_RE

__all__ = ["LocalTier"]

log = logging.getLogger(__name__)

#: A block's index entry: its length and checksum, which name its file.
_Entry = tuple[int, int]


class _Index(LRUCache[str, _Entry]):
    """Block id to entry, least recently used first out, by bytes on disk; what leaves
    to make room is kept in :attr:`evicted` for the caller to delete."""

    def __init__(self, capacity: int) -> None:
        super().__init__(max(capacity, 1), getsizeof=lambda entry: file_length(entry[0]))
        self.evicted: list[tuple[str, _Entry]] = []

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evicted.append(item)
        return item


#: The file in a tier's directory that names the file versions streams went through
#: (:meth:`LocalTier.record_stream`), one key a line.
STREAMS_NAME = "streams"
#: File versions whose streams are remembered, at most: the most recently streamed.
STREAMS_KEPT = 4096
#: A line of the streams file: the digest of a file's URL and version.
_STREAM_KEY = re.compile(r"[0-9a-f]{32}")


def _stream_key(url: str, version: str) -> str:
    """A file version's line in the streams file."""
    return hashlib.blake2b(f"{url}\0{version}".encode(), digest_size=16).hexdigest()


_mincore = ctypes.CDLL(None, use_errno=True).mincore
_mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
#: Block files kept mapped for the event loop's reads: a mapping whose pages are already
#: mapped costs no page faults the next time.
MAPPED_BLOCKS = 256


class _Mapping:
    """A whole block file mapped read-only (private: never written), and its address for
    ``mincore``. The mapping is taken for exactly the file's expected length. Its
    trailer (the parts' digests) is read once, at the first read through it: a block
    file is never changed in place, and one ``mincore`` a read then covers the part alone."""

    __slots__ = ("_mm", "addr", "entry", "trailer", "view")

    def __init__(self, fd: int, entry: _Entry) -> None:
        """Map the block file open as ``fd`` (the caller closes it)."""
        if os.fstat(fd).st_size != file_length(entry[0]):
            raise ValueError(f"not {file_length(entry[0])} bytes")
        # ACCESS_COPY: a writable (private) mapping, which ctypes can take the address of.
        self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        handle = ctypes.c_char.from_buffer(self._mm)
        self.addr = ctypes.addressof(handle)
        del handle
        self.entry = entry
        self.view = memoryview(self._mm)
        self.trailer: bytes | None = None

    def resident(self, begin: int, end: int) -> bool:
        """Whether bytes ``[begin, end)`` are all in the page cache (touching them then
        neither waits for the disk nor meets a disk error)."""
        first = begin - begin % mmap.PAGESIZE
        pages = -(-(end - first) // mmap.PAGESIZE)
        vec = ctypes.create_string_buffer(pages)
        if _mincore(self.addr + first, end - first, vec) != 0:
            return False
        return vec.raw.count(1) == pages

    def close(self) -> None:
        self.view.release()
        self._mm.close()


class LocalTier:
    """An LRU block cache of at most ``capacity`` bytes in the directory ``root``."""

    def __init__(self, root: Path, capacity: int, reserve: float = 0.0) -> None:
        self.root = root
        self.capacity = capacity
        self.reserve = reserve
        self._index = _Index(capacity)
        self._lock = threading.Lock()
        self._short = False  # the last write was skipped for want of free space
        self._maps: OrderedDict[str, _Mapping] = OrderedDict()  # the event loop's only
        self._unmap: deque[str] = deque()  # blocks evicted or dropped by any thread
        self._streams: OrderedDict[str, None] = OrderedDict()  # see record_stream
        self._stream_lines = 0  # lines in the streams file
        self._unsaved: list[str] = []  # streams recorded, not yet in the file

    def fits(self, nbytes: int) -> bool:
        """Whether a file of ``nbytes`` fits here whole: what is worth keeping of one
        read again (an LRU tier smaller than the file evicts it ahead of its next pass)."""
        return nbytes <= self.capacity

    @property
    def used(self) -> int:
        """Bytes of the block files indexed here."""
        return self._index.currsize

    def open(self) -> None:
        """Create the directory, drop leftovers of interrupted writes and files of an
        earlier layout, index the blocks."""
        self.root.mkdir(parents=True, exist_ok=True)
        found: dict[str, tuple[float, _Entry]] = {}
        stale: list[Path] = []
        for path in self.root.glob("*/*"):
            parsed = parse_name(os.fsencode(path.name))
            if path.name.endswith(".tmp") or BLOCK_ID_RE.fullmatch(path.name):
                stale.append(path)  # an unfinished write, or a block in an earlier layout
                continue
            if parsed is None or not parsed[0].startswith(path.parent.name):
                continue  # a foreign file: not ours to index
            block_id, nbytes, checksum = parsed
            try:
                atime = path.stat().st_atime
            except OSError:
                continue
            if block_id in found:
                stale.append(self._path(block_id, *found[block_id][1]))
            found[block_id] = (atime, (nbytes, checksum))
        for path in stale:
            with contextlib.suppress(OSError):
                path.unlink()
        with self._lock:
            for block_id, (_, entry) in sorted(found.items(), key=lambda item: item[1][0]):
                if file_length(entry[0]) <= self._index.maxsize:
                    self._index[block_id] = entry
        self._delete_evicted()
        self._load_streams()
        log.info(
            "local tier %s: %d blocks, %d of %d bytes",
            self.root,
            len(self._index),
            self.used,
            self.capacity,
        )

    def streamed(self, url: str, version: str) -> bool:
        """Whether a stream through this version of a file ended here before, in this
        mount or in an earlier one with this directory (:meth:`record_stream`). Never
        blocks: the event loop's."""
        with self._lock:
            return _stream_key(url, version) in self._streams

    def record_stream(self, url: str, version: str) -> bool:
        """Remember that a stream through this version of a file ended (the most recent
        :data:`STREAMS_KEPT` are); True if it is new here, and :meth:`save_streams`
        should then run. Never blocks: the event loop's."""
        key = _stream_key(url, version)
        with self._lock:
            if key in self._streams:
                self._streams.move_to_end(key)
                return False
            self._streams[key] = None
            if len(self._streams) > STREAMS_KEPT:
                self._streams.popitem(last=False)
            self._unsaved.append(key)
        return True

    def save_streams(self) -> None:
        """Append the streams recorded since the last save to the :data:`STREAMS_NAME`
        file, or rewrite it with those remembered once it has twice as many lines.
        Blocking; a failure is logged (those streams are forgotten at the next start)."""
        with self._lock:
            unsaved, self._unsaved = self._unsaved, []
            self._stream_lines += len(unsaved)
            keys = list(self._streams) if self._stream_lines > 2 * STREAMS_KEPT else None
            if keys is not None:
                self._stream_lines = len(keys)
        if not unsaved:
            return
        try:
            if keys is None:
                with open(self.root / STREAMS_NAME, "a") as fh:
                    fh.write("".join(key + "\n" for key in unsaved))
            else:
                self._write_streams(keys)
        except OSError as exc:
            log.warning("local tier %s: cannot save the streams: %s", self.root, exc)

    def _load_streams(self) -> None:
        """Read the streams file; rewrite it with the newest :data:`STREAMS_KEPT` keys
        if it holds more (or anything that is not a key)."""
        try:
            lines = (self.root / STREAMS_NAME).read_text().splitlines()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("local tier %s: streams file not read: %s", self.root, exc)
            lines = []
        keys = [line for line in lines if _STREAM_KEY.fullmatch(line)]
        with self._lock:
            self._streams = OrderedDict.fromkeys(keys[-STREAMS_KEPT:])
            self._stream_lines = len(self._streams)
        if len(self._streams) != len(lines):
            try:
                self._write_streams(list(self._streams))
            except OSError as exc:
                log.warning("local tier %s: streams file not rewritten: %s", self.root, exc)

    def _write_streams(self, keys: list[str]) -> None:
        """Replace the streams file with ``keys`` (written aside, then renamed)."""
        tmp = self.root / f"{STREAMS_NAME}.{threading.get_ident()}.new"
        tmp.write_text("".join(key + "\n" for key in keys))
        os.replace(tmp, self.root / STREAMS_NAME)

    def _path(self, block_id: str, nbytes: int, checksum: int) -> Path:
        return self.root / block_id[:2] / block_filename(block_id, nbytes, checksum)

    def _used(self, block_id: str) -> _Entry | None:
        """The block's entry if it is indexed, which makes it the most recently used."""
        with self._lock:
            return self._index.get(block_id)

    def get(self, block_id: str) -> bytes | memoryview | None:
        """The block's bytes if they are here and whole, else None. Read with
        ``O_DIRECT`` (:func:`read_direct`): a whole block is read for a stream through
        the file, whose pages the kernel keeps in the mount's own page cache, so a second
        copy here would only cost CPU."""
        entry = self._used(block_id)
        if entry is None:
            return None
        path = self._path(block_id, *entry)
        data = read_direct(str(path), *entry)
        if isinstance(data, BadBlockFile):
            self._drop(block_id, entry, path, data)
            return None
        return data

    def get_part(self, block_id: str, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of the block if it is here and they check out: read
        and checked by the parts that hold them, or with the whole block (:meth:`get`)
        when it has a single part or a part does not match."""
        entry = self._used(block_id)
        if entry is None:
            return None
        piece = read_part(str(self._path(block_id, *entry)), entry[0], (start, stop))
        if piece is not None:
            return piece
        data = self.get(block_id)
        return None if data is None else data[start:stop]

    def get_part_cached(self, block_id: str, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of the block if they are here, check out against their
        parts, and are all in the page cache; else None, at once: never waits for the
        disk, so the event loop may call it (and hop to a thread for :meth:`get_part`
        only when it returns None). Read through a mapping of the file, not copied out
        of the page cache whole: only the bytes asked for are copied, and the parts
        holding them are checked in place, on every read."""
        while self._unmap:
            self._close_map(self._unmap.popleft())
        entry = self._used(block_id)
        if entry is None:
            return None
        span = part_span(entry[0], start, stop)
        if span is None:
            return None  # a block of one part: checked whole, by the thread
        mapping = self._maps.get(block_id)
        if mapping is None or mapping.entry != entry:
            self._close_map(block_id)
            # Opened only if that reads nothing from the disk: after a while (or a
            # drop_caches) the kernel has forgotten a block file's name and inode, and a
            # plain open on the event loop waited for them behind the disk's queue.
            fd = open_if_cached(str(self._path(block_id, *entry)))
            if fd is None:
                return None  # the thread's read opens it (and judges the file)
            try:
                mapping = _Mapping(fd, entry)
            except (OSError, ValueError):
                return None  # the thread's read judges the file
            finally:
                os.close(fd)
            self._maps[block_id] = mapping
            if len(self._maps) > MAPPED_BLOCKS:
                self._maps.popitem(last=False)[1].close()
        else:
            self._maps.move_to_end(block_id)
        nbytes = entry[0]
        if mapping.trailer is None:
            if not mapping.resident(nbytes, file_length(nbytes)):
                return None
            mapping.trailer = bytes(mapping.view[nbytes:])
        if not mapping.resident(span[0], span[1]):
            return None
        piece = range_in(mapping.view, mapping.trailer, nbytes, start, stop)
        if piece is None:
            self._close_map(block_id)  # the thread's read will drop the file
        return piece

    def _close_map(self, block_id: str) -> None:
        mapping = self._maps.pop(block_id, None)
        if mapping is not None:
            mapping.close()

    def close(self) -> None:
        """Unmap what the event loop's reads mapped (call from the event loop)."""
        self._unmap.clear()
        while self._maps:
            self._maps.popitem()[1].close()

    def _drop(self, block_id: str, entry: _Entry, path: Path, bad: BadBlockFile) -> None:
        with self._lock:
            if self._index.get(block_id) == entry:
                del self._index[block_id]
        self._unmap.append(block_id)
        if bad.inode is None:
            return  # unreadable (gone, or a failing disk): forgotten, not judged
        log.warning("local tier: block %s at %s not served: %s; dropped", block_id, path, bad)
        with contextlib.suppress(OSError):
            path.unlink()

    def has(self, block_id: str) -> bool:
        """Whether the block is indexed here (its recency unchanged): lets a caller skip
        the hop to a thread for :meth:`get` when it is not, as for every block of a file
        read for the first time."""
        with self._lock:
            return block_id in self._index

    def put(
        self, block_id: str, data: bytes, *, direct: bool = False, read_back: bool = False
    ) -> None:
        """Store a block (atomically); evicts the least recently used to make room.
        ``direct`` writes it past the page cache (``O_DIRECT``, from ``data`` itself when
        it is a page-aligned buffer, as received blocks are); ``read_back`` then has the
        kernel read the stored file into the page cache in the background (the disk
        fills the pages, the CPU copies nothing), for a block whose parts are read soon
        (see the module docstring)."""
        if file_length(len(data)) > self.capacity:
            return
        if self._used(block_id) is not None:
            return
        if self.reserve and not self._room_for(file_length(len(data))):
            return
        entry = (len(data), block_checksum(data))
        path = self._path(block_id, *entry)
        tmp = path.with_name(f"{block_id}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            write_block(str(tmp), str(path), data, direct=direct)
        except OSError as exc:
            log.warning("local tier: cannot store block %s in %s: %s", block_id, self.root, exc)
            return
        with self._lock:
            self._index[block_id] = entry
        self._delete_evicted()
        if read_back:
            _read_ahead(path)

    def _room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more leave :attr:`reserve` of the filesystem free, after
        evicting this tier's least recently used blocks if need be; logs when it first
        says no, and when there is room again."""
        st = os.statvfs(self.root)
        short = nbytes + self.reserve * st.f_blocks * st.f_frsize - st.f_bavail * st.f_frsize
        if short > 0:
            with self._lock:
                while short > 0 and len(self._index):
                    _, (length, _) = self._index.popitem()
                    short -= file_length(length)
            self._delete_evicted()
        if (short > 0) != self._short:
            self._short = short > 0
            log.warning(
                "local tier %s: %s",
                self.root,
                f"blocks not stored: less than {self.reserve:.0%} of the disk is free"
                if self._short
                else "storing blocks again",
            )
        return short <= 0

    def _delete_evicted(self) -> None:
        with self._lock:
            evicted, self._index.evicted = self._index.evicted, []
        for block_id, entry in evicted:
            self._unmap.append(block_id)  # a mapping would keep its disk space
            with contextlib.suppress(OSError):
                self._path(block_id, *entry).unlink()


def _read_ahead(path: Path) -> None:
    """Start reading the whole file into the page cache, without waiting for it. A hint:
    a file gone meanwhile (evicted) is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
