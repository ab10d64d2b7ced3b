"""The block store: a cache node's blocks as files on one or more cache dirs.

What it promises:

- **Never a wrong byte.** Every block file carries its length and xxh3-64 checksum in its
  name, and both are checked on every serve; a block that fails is deleted and reported
  as absent, so the caller fetches it again. A file also ends with a checksum per
  256 KiB part (:mod:`clientlib.parts`), so a range is checked by reading the parts that
  hold it rather than the whole block.
- **Atomic writes.** A block is written to ``<dir>/tmp/`` and renamed into place, so a
  crash leaves a temp file (removed on the next :meth:`BlockStore.open`), never a
  half-written block under a block name.
- **Bounded usage.** Each dir has a byte limit and its own eviction policy; a put evicts
  that dir's victims until the block fits and the disk keeps ``free_space_ratio`` free.
- **Fast restart.** The index is rebuilt from directory listings alone (no stat, no
  reads): ``<dir>/blocks/<id[:2]>/<id>.<length>.<xxh3-64>``, all in hex.
- **A failing dir is taken out**, and the others keep serving.

Layout of one cache dir::

    <dir>/.lock                  flock'ed while a store uses the dir
    <dir>/tmp/                   writes in progress
    <dir>/blocks/00 .. ff/       block files, sharded by the id's first byte

The index and the policies change only on the event loop thread. Blocking file work runs
in a small dedicated thread pool, except reads of small blocks, which are done inline: on
this kind of machine a read of up to 256 KiB from the page cache takes 6-30 us inline and
150-400 us through a thread pool hop (measured, see :data:`INLINE_READ_MAX`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import math
import operator
import os
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import xxhash
from cachetools import LRUCache

from cachenode import indexsnapshot
from cachenode.eviction import POLICIES, EvictionPolicy, make_policy
from clientlib.blocks import MAX_BLOCK_SIZE, check_block_id
from clientlib.errors import BadRequest, ConfigError
from clientlib.parts import part_trailer, read_parts, trailer_length

__all__ = [
    "INLINE_READ_MAX",
    "BlockFile",
    "BlockPart",
    "BlockStore",
    "CacheDirSpec",
    "block_checksum",
    "block_filename",
    "disk_usage",
]

log = logging.getLogger(__name__)

#: Blocks up to this size are read and verified on the event loop thread: from the page
#: cache that is 6-30 us, against 150-400 us for a hop through the thread pool (measured
#: with asyncio and uvloop on a 2-core VM). Larger blocks go to the pool so that a 4 MiB
#: read from a cold SSD cannot stall every other request.
INLINE_READ_MAX = 256 * 1024

#: Threads for blocking file work; the disks, not the threads, are the limit.
_IO_THREADS = 4

_SHARDS = tuple(f"{i:02x}" for i in range(256))
#: ``<id>.<length>.<xxh3-64>``, 32, 16 and 16 lowercase hex digits: fixed width, so that a
#: whole directory listing can be checked with a few slices and decoded in one call.
_NAME_RE = re.compile(rb"[0-9a-f]{32}\.[0-9a-f]{16}\.[0-9a-f]{16}")
_NAME_LEN = 66
_NAME_CHARS = b"0123456789abcdef.\n"
#: Errors that mean a dir cannot be used any more (gone, replaced, read-only, failing).
_DIR_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
)
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_usage(path: str) -> tuple[int, int]:
    """``(total, available)`` bytes of the file system holding ``path``.

    The one place the store asks the disk how full it is (tests replace it to simulate a
    disk that other programs fill).
    """
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def block_checksum(data: bytes) -> int:
    """The checksum a block file is named with: xxh3-64, ~13 GB/s, so cheap on every serve."""
    return xxhash.xxh3_64_intdigest(data)


def block_filename(block_id: str, nbytes: int, checksum: int) -> str:
    """``<id>.<length>.<checksum>``: all the index needs, read from a directory listing."""
    return f"{block_id}.{nbytes:016x}.{checksum:016x}"


@dataclass(frozen=True)
class CacheDirSpec:
    """One cache dir as configured: where it is and how many bytes it may hold."""

    path: Path
    size: int


class BlockPart(NamedTuple):
    """The verified bytes of the part of a block a caller asked for (``part`` of
    :meth:`BlockStore.open_verified`), read without waiting for the disk; ``nbytes`` is
    the whole block's length."""

    data: bytes
    nbytes: int


class BlockFile(NamedTuple):
    """A verified block file, open for reading: what :meth:`BlockStore.open_verified` hands
    out so a large block can be sent with ``sendfile`` instead of through user memory.

    The fd stays valid and its content fixed even if the block is evicted meanwhile: block
    files are only ever renamed into place and unlinked, never modified in place, so the
    bytes verified are the bytes sent. The caller owns ``fd`` and must :meth:`close` it.
    """

    fd: int
    nbytes: int

    def close(self) -> None:
        os.close(self.fd)


class _BadRead(NamedTuple):
    """Why a block file could not be served."""

    reason: str
    errno: int | None
    inode: int | None  # of a file with wrong content, so only that file is deleted


#: Keys, lengths and checksums of the blocks found in one shard.
_Columns = tuple[list[int], Sequence[int], Sequence[int]]


def _parse_listing(shard: bytes, names: list[bytes]) -> _Columns | None:
    """Keys, lengths and checksums of one shard's file names, or None if any is odd.

    The fast path of the index rebuild, about four times faster than a regular expression
    and ``int`` calls per name: it checks every name's shape at once on the joined listing
    (separators at fixed offsets, nothing but lowercase hex digits and dots, the shard's
    prefix), decodes all the hex with one ``bytes.fromhex`` and reads each name's four
    64-bit words (id high, id low, length, checksum) from an array. Anything else (a temp
    name, a torn name, a directory) returns None and the caller looks at each name.
    """
    count = len(names)
    stride = _NAME_LEN + 1
    blob = b"\n".join(names) + b"\n"
    if (
        len(blob) != stride * count
        or blob[_NAME_LEN::stride] != b"\n" * count
        or blob[32::stride] != b"." * count
        or blob[49::stride] != b"." * count
        or blob.translate(None, _NAME_CHARS)
        or blob[0::stride] != shard[:1] * count
        or blob[1::stride] != shard[1:] * count
    ):
        return None
    words = array("Q")
    words.frombytes(bytes.fromhex(blob.decode("ascii").replace(".", " ")))
    if sys.byteorder == "little":
        words.byteswap()
    nbytes = words[2::4]
    if max(nbytes) > MAX_BLOCK_SIZE:
        return None
    keys = list(
        map(operator.or_, map(operator.lshift, words[0::4], itertools.repeat(64)), words[1::4])
    )
    return keys, nbytes, words[3::4]


def _read_verified(path: str, nbytes: int, checksum: int) -> bytes | _BadRead:
    """Read a block file and return its bytes only if length and checksum match."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return _BadRead(exc.strerror or "open failed", exc.errno, None)
    try:
        data = os.read(fd, nbytes)
        if len(data) < nbytes:
            # Regular files return short reads only at EOF, but loop rather than trust it.
            parts = [data]
            got = len(data)
            while got < nbytes and (chunk := os.read(fd, nbytes - got)):
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        if len(data) != nbytes:
            return _BadRead(f"{len(data)} bytes, want {nbytes}", None, os.fstat(fd).st_ino)
        if xxhash.xxh3_64_intdigest(data) != checksum:
            return _BadRead("checksum mismatch", None, os.fstat(fd).st_ino)
        return data
    except OSError as exc:
        return _BadRead(exc.strerror or "read failed", exc.errno, None)
    finally:
        os.close(fd)


def _open_verified(
    path: str, nbytes: int, checksum: int, part: tuple[int, int] | None = None
) -> int | _BadRead:
    """Open a block file and return its fd only if its length and checksum match.

    With ``part``, a byte range ``[start, stop)`` the caller will send, only the parts
    of the file holding it are read and checked against the file's part checksums
    (:mod:`clientlib.parts`); the whole block is checked if they do not match or the
    file has none.

    The check reads the file through ``read`` (not ``mmap``: a disk error while a mapping
    is paged in is a SIGBUS that kills the node, while ``read`` returns EIO, which takes
    only the dir out) and drops the bytes; the caller then sends from the same fd, at
    offset 0, with ``sendfile``. Reading 4 MiB from the page cache into a fresh buffer
    costs about what an ``mmap`` + checksum does here (0.5-0.7 ms, measured).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return _BadRead(exc.strerror or "open failed", exc.errno, None)
    try:
        st = os.fstat(fd)
        with_trailer = nbytes + trailer_length(nbytes)
        if st.st_size not in (nbytes, with_trailer):
            bad = _BadRead(f"{st.st_size} bytes, want {nbytes}", None, st.st_ino)
        elif (
            part is not None
            and st.st_size == with_trailer
            and read_parts(fd, nbytes, *part) is not None
        ):
            return fd
        else:
            hasher = xxhash.xxh3_64()
            got = 0
            while got < nbytes and (chunk := os.pread(fd, nbytes - got, got)):
                hasher.update(chunk)
                got += len(chunk)
            if got != nbytes:
                bad = _BadRead(f"{got} bytes, want {nbytes}", None, st.st_ino)
            elif hasher.intdigest() != checksum:
                bad = _BadRead("checksum mismatch", None, st.st_ino)
            else:
                return fd
    except OSError as exc:
        bad = _BadRead(exc.strerror or "read failed", exc.errno, None)
    os.close(fd)
    return bad


def _read_part_now(path: str, nbytes: int, part: tuple[int, int]) -> bytes | None:
    """Bytes ``part`` of a block file, checked by its parts, if all of them are in the
    page cache; None otherwise, including for any fault (the pool path then decides)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        piece = read_parts(fd, nbytes, *part, nowait=True)
        return None if piece is None else bytes(piece)
    except OSError:
        return None
    finally:
        os.close(fd)


def _close_opened(job: asyncio.Future[int | _BadRead]) -> None:
    """Close the fd an abandoned :func:`_open_verified` job opened (its caller was
    cancelled while the pool thread worked)."""
    if not job.cancelled() and job.exception() is None and isinstance(fd := job.result(), int):
        os.close(fd)


def _unlink_quietly(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _write_block(tmp_path: str, final_path: str, data: bytes, doomed: list[str]) -> None:
    """Delete the victims' files, then write ``data`` and its part checksums
    (:mod:`clientlib.parts`) to a temp file and rename it in place.

    No fsync: a block is a copy of origin data, and a file torn by a power loss fails its
    checksum on the next serve and is refetched, so durability would buy nothing.
    """
    _unlink_quietly(doomed)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for chunk in (data, part_trailer(data)):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.close(fd)
        fd = -1
        os.rename(tmp_path, final_path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        _unlink_quietly([tmp_path])
        raise


class _CacheDir:
    """One cache dir: its paths, its index (the policy), its byte limit and its health."""

    __slots__ = (
        "blocks",
        "down",
        "limit",
        "lock_fd",
        "policy",
        "reserved",
        "root",
        "seed",
        "shard_paths",
        "tmp",
    )

    def __init__(self, spec: CacheDirSpec, policy: EvictionPolicy) -> None:
        self.root = os.path.abspath(spec.path)
        self.blocks = os.path.join(self.root, "blocks")
        self.shard_paths = [f"{self.blocks}/{shard}" for shard in _SHARDS]
        self.tmp = os.path.join(self.root, "tmp")
        self.limit = spec.size
        self.policy = policy
        #: Bytes of puts being written here: counted against the limit before they land.
        self.reserved = 0
        self.down = False
        self.lock_fd = -1
        self.seed = xxhash.xxh3_64_intdigest(self.root.encode())

    def block_path(self, block_id: str, nbytes: int, checksum: int) -> str:
        return f"{self.blocks}/{block_id[:2]}/{block_filename(block_id, nbytes, checksum)}"

    def healthy(self) -> bool:
        """Whether the dir's structure is still in place and writable."""
        return (
            os.path.isdir(self.blocks)
            and os.path.isdir(self.tmp)
            and os.access(self.tmp, os.W_OK | os.X_OK)
        )


def _key(block_id: str) -> int:
    """The index key of a block: its id as a 128-bit int (48 bytes, vs 64 for 16 bytes)."""
    return int(check_block_id(block_id), 16)


class BlockStore:
    """Blocks on one or more cache dirs, with their index, eviction and checksums.

    Blocks are placed by weighted rendezvous hashing of the id over the dirs that are up,
    weighted by dir size, so adding a dir moves only the blocks the new dir wins. Lookups
    check every dir, so blocks stay servable where they are after the set of dirs changes.

    :meth:`open` must be called before use and :meth:`close` after; methods run on one
    event loop. ``on_evict(nbytes)`` is called once per block that leaves to make room or
    through :meth:`evict` (not for blocks dropped because they were corrupt).
    """

    def __init__(
        self,
        dirs: Sequence[CacheDirSpec],
        *,
        free_space_ratio: float = 0.1,
        policy: str = "s3fifo",
        on_evict: Callable[[int], None] | None = None,
        memory_bytes: int = 0,
    ) -> None:
        if not dirs:
            raise ConfigError("at least one cache dir is needed")
        if not 0.0 <= free_space_ratio < 1.0:
            raise ConfigError(f"free_space_ratio {free_space_ratio} must be in [0, 1)")
        if policy not in POLICIES:
            raise ConfigError(
                f"unknown eviction policy {policy!r}; choose one of {', '.join(POLICIES)}"
            )
        for spec in dirs:
            if spec.size <= 0:
                raise ConfigError(f"cache dir {spec.path}: size must be positive")
        self._dirs = [_CacheDir(spec, make_policy(policy)) for spec in dirs]
        if len({d.root for d in self._dirs}) != len(self._dirs):
            raise ConfigError("a cache dir is listed twice")
        self._up: list[_CacheDir] = []
        self._policy_name = policy
        self._free_space_ratio = free_space_ratio
        self._on_evict = on_evict
        self._executor: ThreadPoolExecutor | None = None
        self._tmp_counter = itertools.count()
        #: One write per block id at a time: a second put of the id waits for the first.
        self._puts: dict[int, asyncio.Task[bool]] = {}
        #: Blocks whose files are being deleted in the pool; a put of one waits for it.
        self._unlinking: dict[int, asyncio.Future[None]] = {}
        #: Hot small blocks' bytes, by id, with the checksum they were verified against:
        #: see :meth:`_remembered`.
        self._memory: LRUCache[str, tuple[int, bytes]] = LRUCache(
            max(memory_bytes, 1), getsizeof=lambda entry: len(entry[1])
        )
        #: Where :meth:`read_now` checks large blocks: one buffer, reused, because a fresh
        #: 4 MiB buffer costs a page fault per 4 KiB page on every hit.
        self._scratch = bytearray()

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Prepare every dir and rebuild the index from the files on disk.

        Creates the layout, removes temp files and malformed names left by a crash, and
        indexes the blocks from directory listings only. A dir that cannot be prepared is
        logged and left out; if none can, :class:`ConfigError` is raised.
        """
        if self._executor is not None:
            raise RuntimeError("BlockStore is already open")
        for d in self._dirs:
            try:
                self._open_dir(d)
            except OSError as exc:
                log.error("cache dir %s cannot be used: %s", d.root, exc)
                d.down = True
            except BaseException:
                self._release_locks()
                raise
        self._up = [d for d in self._dirs if not d.down]
        if not self._up:
            self._release_locks()
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
        """Wait for file work in progress, save each dir's index snapshot (for a fast
        restart, see :mod:`cachenode.indexsnapshot`), then release the dirs."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            for d in self._up:
                self._save_snapshot(d)
        self._release_locks()

    @staticmethod
    def _save_snapshot(d: _CacheDir) -> None:
        entries = list(d.policy.entries())
        keys, nbytes, tags = (
            (list(c) for c in zip(*entries, strict=True)) if entries else ([], [], [])
        )
        try:
            indexsnapshot.save(d.root, d.shard_paths, keys, nbytes, tags)
        except OSError as exc:
            log.warning("cache dir %s: no index snapshot saved (%s); next start scans", d.root, exc)

    def _release_locks(self) -> None:
        for d in self._dirs:
            if d.lock_fd >= 0:
                os.close(d.lock_fd)
                d.lock_fd = -1

    def _open_dir(self, d: _CacheDir) -> None:
        os.makedirs(d.root, exist_ok=True)
        d.lock_fd = os.open(os.path.join(d.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(d.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"cache dir {d.root} is in use by another process") from None
        os.makedirs(d.tmp, exist_ok=True)
        for shard in _SHARDS:
            os.makedirs(os.path.join(d.blocks, shard), exist_ok=True)
        leftovers = 0
        with os.scandir(d.tmp) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    log.warning("cache dir %s: unexpected directory %s left alone", d.root, entry)
                    continue
                os.unlink(entry.path)
                leftovers += 1
        if leftovers:
            log.info("cache dir %s: removed %d unfinished writes", d.root, leftovers)

        total, _ = disk_usage(d.root)
        d.limit = min(d.limit, int(total * (1.0 - self._free_space_ratio)))
        malformed: list[str] = []
        saved = indexsnapshot.load(d.root, d.shard_paths)
        others = [o.policy for o in self._dirs if o is not d and not o.down]
        if saved is not None and not any(any(map(o.__contains__, saved[0])) for o in others):
            d.policy.load(*saved)
            log.info("cache dir %s: index loaded from its snapshot", d.root)
        else:
            for columns in self._scan_blocks(d, others, malformed):
                d.policy.load(*columns)
        _unlink_quietly(malformed)
        if malformed:
            log.warning("cache dir %s: removed %d malformed block files", d.root, len(malformed))
        over: list[str] = []
        while d.policy.nbytes > d.limit and (victim := d.policy.pop_victim()) is not None:
            over.append(d.block_path(f"{victim.key:032x}", victim.nbytes, victim.tag))
            self._count_eviction(victim.nbytes)
        _unlink_quietly(over)
        if over:
            log.info("cache dir %s: evicted %d blocks to fit %d bytes", d.root, len(over), d.limit)

    def _scan_blocks(
        self, d: _CacheDir, others: list[EvictionPolicy], malformed: list[str]
    ) -> Iterator[_Columns]:
        """Index entries of the block files in ``d``, a shard at a time; collect the paths
        to delete.

        Each shard's listing goes through :func:`_parse_listing` (C-level loops: ~1.5 us a
        block, listing included); a shard with anything unusual in it goes through the
        careful per-name path.
        """
        for shard, shard_path in zip(_SHARDS, d.shard_paths, strict=True):
            names = os.listdir(os.fsencode(shard_path))  # bytes: cheaper than decoding
            if not names:
                continue
            parsed = _parse_listing(shard.encode(), names)
            if (
                parsed is None
                or len(set(parsed[0])) != len(names)
                or any(any(map(o.__contains__, parsed[0])) for o in others)
            ):
                parsed = self._scan_carefully(d, shard_path, shard, names, others, malformed)
            yield parsed

    @staticmethod
    def _scan_carefully(
        d: _CacheDir,
        shard_path: str,
        shard: str,
        names: list[bytes],
        others: list[EvictionPolicy],
        malformed: list[str],
    ) -> _Columns:
        keys: list[int] = []
        nbytes: list[int] = []
        checksums: list[int] = []
        seen: set[int] = set()
        for raw_name in names:
            name = os.fsdecode(raw_name)
            path = f"{shard_path}/{name}"
            if (
                _NAME_RE.fullmatch(raw_name) is None
                or not name.startswith(shard)
                or int(name[33:49], 16) > MAX_BLOCK_SIZE
            ):
                if os.path.isdir(path) and not os.path.islink(path):
                    log.warning("cache dir %s: foreign dir %s left alone", d.root, path)
                else:
                    malformed.append(path)
                continue
            key = int(name[:32], 16)
            if key in seen or any(key in o for o in others):
                # The same block twice (in another dir, or with another length or checksum):
                # keep the first one found; there is no telling which one is better.
                malformed.append(path)
                continue
            seen.add(key)
            keys.append(key)
            nbytes.append(int(name[33:49], 16))
            checksums.append(int(name[50:], 16))
        return keys, nbytes, checksums

    # -- queries ---------------------------------------------------------------------

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

    def __contains__(self, block_id: str) -> bool:
        """Whether the block is indexed; not a hit (does not change its eviction order)."""
        key = _key(block_id)
        return any(key in d.policy for d in self._up)

    def placement(self, block_id: str) -> list[Path]:
        """The dirs that are up, in the order a put of ``block_id`` would try them."""
        return [Path(d.root) for d in self._ranked(block_id)]

    # -- reads -----------------------------------------------------------------------

    async def get(self, block_id: str) -> bytes | None:
        """The block's bytes, verified, counted as a hit; None if absent or bad.

        A file whose length or checksum is wrong is deleted, dropped from the index and
        logged; None tells the caller to fetch the block again.
        """
        result = await self.open_verified(block_id, read_max=MAX_BLOCK_SIZE)
        assert not isinstance(result, BlockFile)  # every block fits read_max
        return result

    def length(self, block_id: str) -> int | None:
        """The block's length in bytes if it is indexed (not a hit, no disk access)."""
        found = self._indexed(_key(block_id))
        return None if found is None else found[1][0]

    async def open_verified(
        self,
        block_id: str,
        *,
        read_max: int = INLINE_READ_MAX,
        part: tuple[int, int] | None = None,
    ) -> bytes | BlockFile | BlockPart | None:
        """The block, verified and counted as a hit: its bytes if it has at most
        ``read_max`` of them, else an open :class:`BlockFile`; None if absent or bad.
        With ``part``, a :class:`BlockPart` when those bytes are in the page cache: they
        are read and checked on the event loop thread, which skips the hop to a pool
        thread (a 64 KiB range from a warm node through ``CacheClient.read_part``: p50
        0.54 ms with the hop, 0.47 ms without, 600 reads, two runs each).

        The checksum is checked before anything is returned, so a caller that sends from
        the :class:`BlockFile` sends verified bytes only: with ``part`` (bytes
        ``[start, stop)``), the caller sends only those, and only the parts of the file
        that hold them may have been checked. Small blocks come back as bytes
        because they were read to verify them anyway and one ``write`` of headers and body
        is cheaper than a ``sendfile`` of a few pages; large ones are verified in the pool
        and sent by the caller straight from the page cache. A bad file is handled as in
        :meth:`get`.
        """
        key = _key(block_id)
        found = self._indexed(key)
        if found is None:
            return None
        d, entry = found
        nbytes, checksum = entry
        small = nbytes <= INLINE_READ_MAX
        if small and (data := self._remembered(block_id, checksum)) is not None:
            d.policy.touch(key)
            return data
        path = d.block_path(block_id, nbytes, checksum)
        result: bytes | int | _BadRead
        if nbytes <= read_max:
            result = (
                _read_verified(path, nbytes, checksum)
                if small
                else await asyncio.get_running_loop().run_in_executor(
                    self._pool(), _read_verified, path, nbytes, checksum
                )
            )
        else:
            if part is not None and (piece := _read_part_now(path, nbytes, part)) is not None:
                d.policy.touch(key)
                return BlockPart(piece, nbytes)
            job = asyncio.get_running_loop().run_in_executor(
                self._pool(), _open_verified, path, nbytes, checksum, part
            )
            try:
                result = await asyncio.shield(job)
            except asyncio.CancelledError:
                job.add_done_callback(_close_opened)
                raise
        if isinstance(result, _BadRead):
            self._drop_bad(d, key, block_id, entry, path, result)
            return None
        d.policy.touch(key)
        if isinstance(result, int):
            return BlockFile(result, nbytes)
        return self._remember(block_id, checksum, result) if small else result

    def _indexed(self, key: int) -> tuple[_CacheDir, tuple[int, int]] | None:
        """The dir that holds block ``key`` and its index entry (length, checksum)."""
        for d in self._up:
            entry = d.policy.lookup(key)
            if entry is not None:
                return d, entry
        return None

    def read_now(self, block_id: str) -> bytes | BlockFile | None:
        """The block, verified and counted as a hit, if that needs no wait for the disk.

        For the hit fast path (:mod:`cachenode.fasthits`), on the event loop thread: the
        file is read with ``RWF_NOWAIT``, which fails rather than block when any of it is
        out of the page cache. Small blocks come back as their bytes; large ones as an
        open, verified :class:`BlockFile` (their bytes were checked in a reused buffer).
        None means "not now": absent, not all in memory, or not as indexed. The caller
        then takes :meth:`open_verified`, which waits for the disk and deals with a bad
        file, so this method never has to. Small blocks come from memory when they
        can (:meth:`_remembered`).
        """
        key = _key(block_id)
        found = self._indexed(key)
        if found is None:
            return None
        d, entry = found
        nbytes, checksum = entry
        small = nbytes <= INLINE_READ_MAX
        if small:
            if (data := self._remembered(block_id, checksum)) is not None:
                d.policy.touch(key)
                return data
            buf = bytearray(nbytes)
        else:
            if len(self._scratch) < nbytes:
                self._scratch = bytearray(nbytes)
            buf = memoryview(self._scratch)[:nbytes]
        try:
            fd = os.open(d.block_path(block_id, nbytes, checksum), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            got = os.preadv(fd, (buf,), 0, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not all in the page cache; or a failing disk
            got = -1
        if got != nbytes or xxhash.xxh3_64_intdigest(buf) != checksum:
            os.close(fd)
            return None
        d.policy.touch(key)
        if small:
            os.close(fd)
            return self._remember(block_id, checksum, buf)
        return BlockFile(fd, nbytes)

    def _remembered(self, block_id: str, checksum: int) -> bytes | None:
        """A small block's bytes from memory, verified against the index's checksum.

        Called only after the index lookup, so an evicted block is never served from
        here; the bytes are hashed again on every serve (2 us for 64 KiB), the same
        promise as for files. Serving hot small blocks from memory saves the open, read
        and close that were most of a small hit's cost (see loadtest/bench_hot_blocks.py).
        """
        entry = self._memory.get(block_id)
        if entry is None:
            return None
        if entry[0] == checksum and xxhash.xxh3_64_intdigest(entry[1]) == checksum:
            return entry[1]
        del self._memory[block_id]  # another version of the block, or bad memory
        return None

    def _remember(self, block_id: str, checksum: int, data: bytes | bytearray) -> bytes:
        """Keep a verified small block in memory (if it fits) and return it as bytes."""
        data = bytes(data)
        if len(data) < self._memory.maxsize:
            self._memory[block_id] = (checksum, data)
        return data

    def _drop_bad(
        self,
        d: _CacheDir,
        key: int,
        block_id: str,
        entry: tuple[int, int],
        path: str,
        bad: _BadRead,
    ) -> None:
        """Handle a block file that could not be served."""
        if d.policy.lookup(key) != entry:
            return  # evicted (or replaced) while we read: a plain miss
        if bad.inode is None and os.path.exists(path):
            return  # the file was replaced while we read; the new one is fine
        log.warning("block %s in cache dir %s not served: %s; dropped", block_id, d.root, bad)
        d.policy.remove(key)
        if bad.inode is not None:
            try:
                if os.stat(path).st_ino == bad.inode:
                    os.unlink(path)
            except OSError as exc:
                log.warning("block %s in cache dir %s: cannot delete: %s", block_id, d.root, exc)
        if bad.errno in _DIR_ERRNOS and not d.healthy():
            self._mark_down(d, bad.reason)

    # -- writes ----------------------------------------------------------------------

    async def put(self, block_id: str, data: bytes) -> bool:
        """Store a block; True once it is stored (or already was), False if it cannot be.

        Tries the dirs in rendezvous order: a dir that fails is marked down and the next one
        is tried; a dir without room (ENOSPC, block larger than the dir, free space not
        reachable by evicting) is skipped. Each failure is logged. The write continues even
        if the caller is cancelled, so the index never misses a file it wrote.
        """
        key = _key(block_id)
        if len(data) > MAX_BLOCK_SIZE:
            raise BadRequest(f"block {block_id} of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        running = self._puts.get(key)
        if running is None:
            if any(key in d.policy for d in self._up):
                return True
            running = asyncio.ensure_future(self._put(block_id, key, data))
            self._puts[key] = running
            running.add_done_callback(lambda task: self._put_done(key, task))
        return await asyncio.shield(running)

    def _put_done(self, key: int, task: asyncio.Task[bool]) -> None:
        if self._puts.get(key) is task:
            del self._puts[key]

    async def _put(self, block_id: str, key: int, data: bytes) -> bool:
        unlinking = self._unlinking.get(key)
        if unlinking is not None:
            await asyncio.wait([unlinking])
        nbytes = len(data)
        loop = asyncio.get_running_loop()
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
                doomed = self._make_room(d, nbytes)
            except OSError as exc:
                self._dir_failed(d, block_id, exc)
                continue
            if doomed is None:
                log.warning("block %s: no room in cache dir %s", block_id, d.root)
                continue
            checksum = block_checksum(data)
            final = d.block_path(block_id, nbytes, checksum)
            tmp = f"{d.tmp}/{block_id}.{os.getpid()}.{next(self._tmp_counter)}.tmp"
            doomed_paths = [path for _, path in doomed]
            job = loop.run_in_executor(self._pool(), _write_block, tmp, final, data, doomed_paths)
            self._track_unlinks([key for key, _ in doomed], job)
            d.reserved += nbytes
            try:
                await job
            except OSError as exc:
                self._dir_failed(d, block_id, exc)
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

    def _dir_failed(self, d: _CacheDir, block_id: str, exc: OSError) -> None:
        if exc.errno in _NO_SPACE_ERRNOS:
            log.warning("block %s not stored in cache dir %s: %s", block_id, d.root, exc)
        elif exc.errno in _DIR_ERRNOS and not d.healthy():
            self._mark_down(d, f"{exc} (writing block {block_id})")
        else:
            log.warning("block %s not stored in cache dir %s: %s", block_id, d.root, exc)

    def _make_room(self, d: _CacheDir, nbytes: int) -> list[tuple[int, str]] | None:
        """Evict ``d``'s victims until ``nbytes`` more fit: their keys and paths, or None.

        Room means: under the dir's limit, counting puts still being written, and the disk
        keeping ``free_space_ratio`` of its size free. Victims leave the index here, on the
        loop thread, so concurrent puts see the room as taken; their files are deleted by
        the writer before it writes.
        """
        policy = d.policy
        total, available = disk_usage(d.root)
        over_limit = policy.nbytes + d.reserved + nbytes - d.limit
        short_of_free = math.ceil(total * self._free_space_ratio) + nbytes + d.reserved
        short_of_free -= available
        needed = max(over_limit, short_of_free)
        if needed <= 0:
            return []
        if needed > policy.nbytes:
            return None
        doomed: list[tuple[int, str]] = []
        while needed > 0 and (victim := policy.pop_victim()) is not None:
            needed -= victim.nbytes
            block_id = f"{victim.key:032x}"
            doomed.append((victim.key, d.block_path(block_id, victim.nbytes, victim.tag)))
            self._count_eviction(victim.nbytes)
        return doomed

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
            job = asyncio.get_running_loop().run_in_executor(self._pool(), _unlink_quietly, doomed)
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

    # -- helpers ---------------------------------------------------------------------

    def _ranked(self, block_id: str) -> list[_CacheDir]:
        """Dirs that are up, best first, by weighted rendezvous hashing.

        Each dir scores ``-size / ln(u)`` with ``u`` uniform in (0, 1) from a hash of the id
        and the dir's path: a dir wins a share of ids proportional to its size, and adding
        a dir only takes ids away from the others, never moves them between old dirs.
        """
        if len(self._up) == 1:
            return list(self._up)
        raw = block_id.encode()

        def score(d: _CacheDir) -> float:
            u = (xxhash.xxh3_64_intdigest(raw, seed=d.seed) + 0.5) / 2.0**64
            return -d.limit / math.log(u)

        return sorted(self._up, key=score, reverse=True)

    def _mark_down(self, d: _CacheDir, reason: str) -> None:
        """Stop using a dir: forget its blocks, leave its files for a later restart."""
        if d.down:
            return
        d.down = True
        log.error(
            "cache dir %s is down (%s): %d blocks dropped from the index, dir no longer used",
            d.root,
            reason,
            len(d.policy),
        )
        d.policy = make_policy(self._policy_name)
        self._up = [x for x in self._dirs if not x.down]

    def _count_eviction(self, nbytes: int) -> None:
        if self._on_evict is not None:
            self._on_evict(nbytes)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            raise RuntimeError("BlockStore is not open")
        return self._executor
