"""The block file: how one cached block is named, laid out and checked on a disk.

Both users of a disk cache keep blocks in this one format: a cache node's store
(:mod:`cachenode.store`) and a mount's local tier (:mod:`mountd.localtier`).

- **Name.** ``<id>.<length>.<xxh3-64>``: the block id, its length and the checksum of its
  bytes, 32, 16 and 16 lowercase hex digits (:func:`block_filename`). An index is rebuilt
  from directory listings alone, with no stat and no read (:func:`parse_name`,
  :func:`parse_names`).
- **Layout.** The block's bytes, then, for a block larger than one :data:`PART_SIZE`
  part, a trailer: the xxh3-64 of each part, 8 big-endian bytes each (128 bytes for a
  4 MiB block, not counted as block bytes). A file without a trailer (written before
  trailers existed) is still valid: it is checked whole.
- **Checks.** A byte comes out only after the bytes holding it matched a checksum: a whole
  read against the name's checksum (:func:`read_verified`, :func:`open_verified`), a
  range against the trailer's parts that hold it (:func:`read_part`). The trailer is not
  trusted beyond that: when a part does not match, the whole block against its name's
  checksum decides.
- **Writes** go to a temporary name and are renamed into place (:func:`write_block`), so
  a crash leaves a temp file, never a torn block under a block name.

Every function here is blocking file work on one file; callers choose the thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import mmap
import operator
import os
import platform
import re
import sys
import threading
from array import array
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import xxhash

from clientlib.blocks import MAX_BLOCK_SIZE
from clientlib.buffers import unfilled_aligned

__all__ = [
    "DIRECT_ALIGN",
    "NAME_LENGTH",
    "PART_SIZE",
    "BadBlockFile",
    "BlockFile",
    "NameColumns",
    "block_checksum",
    "block_filename",
    "file_length",
    "open_cached",
    "open_if_cached",
    "open_or_read",
    "open_verified",
    "parse_name",
    "parse_names",
    "part_span",
    "part_trailer",
    "range_in",
    "read_direct",
    "read_part",
    "read_verified",
    "resident",
    "trailer_length",
    "write_block",
]

#: A block's bytes as read: bytes, or a view of the buffer a direct read filled.
_Buf = TypeVar("_Buf", bytes, memoryview)

#: Bytes a part. A random 64 KiB read through a mount reaches a node as a range of a
#: little more than 64 KiB; 256 KiB parts keep the over-read of such a range to one or
#: two parts while a 4 MiB block's trailer stays at 128 bytes.
PART_SIZE = 256 * 1024

#: Characters in a block file name: ``<32 hex>.<16 hex>.<16 hex>``.
NAME_LENGTH = 66

_DIGEST = 8
_NAME_RE = re.compile(rb"[0-9a-f]{32}\.[0-9a-f]{16}\.[0-9a-f]{16}")
_NAME_CHARS = b"0123456789abcdef.\n"


# -- naming ------------------------------------------------------------------------------


def block_checksum(data: bytes | bytearray | memoryview) -> int:
    """The checksum a block file is named with: xxh3-64, cheap enough for every serve."""
    return xxhash.xxh3_64_intdigest(data)


def block_filename(block_id: str, nbytes: int, checksum: int) -> str:
    """``<id>.<length>.<checksum>``: all an index needs, read from a directory listing."""
    return f"{block_id}.{nbytes:016x}.{checksum:016x}"


def parse_name(name: bytes) -> tuple[str, int, int] | None:
    """``(block_id, nbytes, checksum)`` of a block file name; None for any other name
    (a temp file, a torn name, a length over :data:`~clientlib.blocks.MAX_BLOCK_SIZE`)."""
    if _NAME_RE.fullmatch(name) is None:
        return None
    nbytes = int(name[33:49], 16)
    if nbytes > MAX_BLOCK_SIZE:
        return None
    return name[:32].decode("ascii"), nbytes, int(name[50:], 16)


#: Keys (block ids as 128-bit ints), lengths and checksums of a listing, column by column.
NameColumns = tuple[list[int], Sequence[int], Sequence[int]]


def parse_names(prefix: bytes, names: list[bytes]) -> NameColumns | None:
    """Keys, lengths and checksums of a listing of block file names that all start with
    the two characters ``prefix``; None if any name is not such a name.

    The fast path of an index rebuild, with C-level loops only: every name's shape is
    checked at once on the joined listing (separators at fixed offsets, nothing but
    lowercase hex digits and dots, the prefix), all the hex is decoded with one
    ``bytes.fromhex`` and each name's four 64-bit words (id high, id low, length,
    checksum) are read from an array. On None the caller looks at each name
    (:func:`parse_name`).
    """
    count = len(names)
    stride = NAME_LENGTH + 1
    blob = b"\n".join(names) + b"\n"
    if (
        len(blob) != stride * count
        or blob[NAME_LENGTH::stride] != b"\n" * count
        or blob[32::stride] != b"." * count
        or blob[49::stride] != b"." * count
        or blob.translate(None, _NAME_CHARS)
        or blob[0::stride] != prefix[:1] * count
        or blob[1::stride] != prefix[1:] * count
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


# -- layout ------------------------------------------------------------------------------


def trailer_length(nbytes: int) -> int:
    """Bytes of the trailer of a block of ``nbytes``: none for a block of one part."""
    if nbytes <= PART_SIZE:
        return 0
    return _DIGEST * -(-nbytes // PART_SIZE)


def file_length(nbytes: int) -> int:
    """Bytes on disk of a block file of ``nbytes`` written by :func:`write_block`."""
    return nbytes + trailer_length(nbytes)


def part_trailer(data: bytes | bytearray | memoryview) -> bytes:
    """The trailer to write after ``data``."""
    if len(data) <= PART_SIZE:
        return b""
    view = memoryview(data)
    return b"".join(
        xxhash.xxh3_64_digest(view[start : start + PART_SIZE])
        for start in range(0, len(view), PART_SIZE)
    )


# -- reads -------------------------------------------------------------------------------


class BlockFile(NamedTuple):
    """A block file checked against its name's checksum, open for reading, so that a
    large block can be sent with ``sendfile`` instead of through user memory.

    The fd stays valid and its content fixed even if the block is evicted meanwhile:
    block files are only ever renamed into place and unlinked, never changed in place,
    so the bytes checked are the bytes sent (from offset 0 to ``nbytes``). The holder
    owns ``fd`` and must :meth:`close` it.
    """

    fd: int
    nbytes: int

    def close(self) -> None:
        os.close(self.fd)


class BadBlockFile(NamedTuple):
    """Why a block file could not be served."""

    reason: str
    #: The error of a failed open or read (the caller may judge the disk by it), else None.
    errno: int | None
    #: The inode of a file with wrong content, so that only that file is deleted; None
    #: when the file could not be read at all.
    inode: int | None


def _os_error(exc: OSError, what: str) -> BadBlockFile:
    return BadBlockFile(exc.strerror or f"{what} failed", exc.errno, None)


def read_verified(path: str, nbytes: int, checksum: int) -> bytes | BadBlockFile:
    """The block's bytes if the file at ``path`` holds ``nbytes`` matching ``checksum``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return _os_error(exc, "open")
    try:
        data = os.read(fd, nbytes)
        if len(data) < nbytes:
            # Regular files return short reads only at EOF, but loop rather than trust it.
            chunks = [data]
            got = len(data)
            while got < nbytes and (chunk := os.read(fd, nbytes - got)):
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
        return _checked(data, nbytes, checksum, fd)
    except OSError as exc:
        return _os_error(exc, "read")
    finally:
        os.close(fd)


def _checked(data: _Buf, nbytes: int, checksum: int, fd: int) -> _Buf | BadBlockFile:
    """``data``, read whole from ``fd``, if it is ``nbytes`` matching ``checksum``."""
    if len(data) != nbytes:
        return BadBlockFile(f"{len(data)} bytes, want {nbytes}", None, os.fstat(fd).st_ino)
    if xxhash.xxh3_64_intdigest(data) != checksum:
        return BadBlockFile("checksum mismatch", None, os.fstat(fd).st_ino)
    return data


def read_direct(path: str, nbytes: int, checksum: int) -> memoryview | BadBlockFile:
    """As :func:`read_verified`, for a block read whole once and then dropped (a stream
    through a file): read with ``O_DIRECT``, from the disk straight into the returned
    buffer, never through the page cache. A buffered read of a block not in the page
    cache fills freshly allocated pages and then copies them: about 600 us of CPU per MB
    on this project's VM, against 220 with ``O_DIRECT`` (``loadtest/results/mount.md``).
    Blocks that are in the page cache are read from the disk all the same: asking first
    (``RWF_NOWAIT``) starts the kernel's read-ahead into the page cache on a miss, the
    very cost this avoids. The buffer is not zeroed (:mod:`clientlib.buffers`): it is
    checked, and handed out, only once all ``nbytes`` were read into it. A file system
    that refuses ``O_DIRECT`` gets :func:`read_verified`'s buffered read.
    """
    buf = unfilled_aligned(nbytes + -nbytes % DIRECT_ALIGN, DIRECT_ALIGN)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return read_verified(path, nbytes, checksum)
        return _os_error(exc, "open")
    try:
        got = 0
        try:
            while got < nbytes and (n := os.preadv(fd, (buf[got:],), got)):
                got += n
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return read_verified(path, nbytes, checksum)  # O_DIRECT taken, not this I/O
        return _checked(buf[: min(got, nbytes)], nbytes, checksum, fd)
    except OSError as exc:
        return _os_error(exc, "read")
    finally:
        os.close(fd)


def open_verified(
    path: str, nbytes: int, checksum: int, part: tuple[int, int] | None = None
) -> BlockFile | BadBlockFile:
    """The file at ``path``, open, if it holds ``nbytes`` matching ``checksum``.

    With ``part``, a byte range ``[start, stop)`` the caller will send, only the parts
    holding it are read and checked against the trailer; the whole block is checked if
    they do not match or the file has no trailer.

    The check reads through ``read``, not ``mmap``: a disk error while a mapping is paged
    in is a SIGBUS that kills the process, while ``read`` returns EIO, which the caller
    can handle. The bytes read are dropped; the caller sends from the same fd.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return _os_error(exc, "open")
    try:
        st = os.fstat(fd)
        with_trailer = file_length(nbytes)
        if st.st_size not in (nbytes, with_trailer):
            bad = BadBlockFile(f"{st.st_size} bytes, want {nbytes}", None, st.st_ino)
        elif (
            part is not None
            and st.st_size == with_trailer
            and _read_parts(fd, nbytes, *part) is not None
        ):
            return BlockFile(fd, nbytes)
        else:
            hasher = xxhash.xxh3_64()
            got = 0
            while got < nbytes and (chunk := os.pread(fd, nbytes - got, got)):
                hasher.update(chunk)
                got += len(chunk)
            if got != nbytes:
                bad = BadBlockFile(f"{got} bytes, want {nbytes}", None, st.st_ino)
            elif hasher.intdigest() != checksum:
                bad = BadBlockFile("checksum mismatch", None, st.st_ino)
            else:
                return BlockFile(fd, nbytes)
    except OSError as exc:
        bad = _os_error(exc, "read")
    os.close(fd)
    return bad


def open_or_read(path: str, nbytes: int, checksum: int) -> BlockFile | memoryview | BadBlockFile:
    """A whole block to send, checked: its file, open (:func:`open_verified`), when all of
    it is in the page cache, else its bytes read from the disk with ``O_DIRECT``
    (:func:`read_direct`), so that a block read once does not fill the page cache: on
    this project's VM new page cache pages cost more CPU than the read itself, and they
    push out the pages hits are served from. A kernel that cannot tell
    (:func:`resident`) gets :func:`open_verified`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return _os_error(exc, "open")
    try:
        cached = resident(fd, 0, nbytes)
    finally:
        os.close(fd)
    if cached is False:
        return read_direct(path, nbytes, checksum)
    return open_verified(path, nbytes, checksum)


def read_part(
    path: str, nbytes: int, part: tuple[int, int], *, nowait: bool = False
) -> bytes | None:
    """Bytes ``part`` (``[start, stop)``) of the block file at ``path`` if the trailer's
    parts that hold them match; None (not an error: the caller then checks the whole
    block) for a block of one part, a file without a trailer, a mismatch or any fault.

    With ``nowait`` the file is opened only if that needs no disk read (:func:`open_if_cached`)
    and the reads use ``RWF_NOWAIT``, and None also means "not all in memory": an event
    loop can serve a cached range inline, without a hop to a thread.
    """
    fd = open_if_cached(path) if nowait else _open_or_none(path)
    if fd is None:
        return None
    try:
        piece = _read_parts(fd, nbytes, *part, nowait=nowait)
        return None if piece is None else bytes(piece)
    except OSError:
        return None
    finally:
        os.close(fd)


class _CachestatRange(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Cachestat(ctypes.Structure):
    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    )


#: ``cachestat(2)`` (Linux 6.5): 451 in the syscall table every newer architecture shares.
_CACHESTAT = 451 if platform.machine() in ("x86_64", "aarch64", "riscv64") else None
_libc = ctypes.CDLL(None, use_errno=True)
_PAGE = mmap.PAGESIZE


def resident(fd: int, start: int, stop: int) -> bool | None:
    """Whether every page of bytes ``[start, stop)`` of the file ``fd`` is in the page
    cache; None when this kernel cannot tell (no ``cachestat(2)``).

    Asked with ``cachestat(2)``, which only counts pages. A ``RWF_NOWAIT`` read that
    finds a page missing is no way to ask: before it fails with ``EAGAIN`` it starts the
    kernel's read-ahead of the range, so the probe itself reads the file from the disk
    into the page cache, on the caller's thread (an event loop's, in the hit fast path).
    """
    global _CACHESTAT
    if _CACHESTAT is None or stop <= start:
        return None if _CACHESTAT is None else True
    span = _CachestatRange(start, stop - start)
    stat = _Cachestat()
    if _libc.syscall(_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # older kernel, seccomp
            _CACHESTAT = None
        return None
    return stat.nr_cache >= (stop - 1) // _PAGE - start // _PAGE + 1


class _OpenHow(ctypes.Structure):
    _fields_ = tuple((name, ctypes.c_uint64) for name in ("flags", "mode", "resolve"))


#: ``openat2(2)`` (Linux 5.6): 437 on every architecture; ``RESOLVE_CACHED`` is 5.12's.
_OPENAT2: int | None = 437
_RESOLVE_CACHED = 0x20
_AT_FDCWD = -100


def open_if_cached(path: str) -> int | None:
    """``path`` opened for reading, if that needs no read of the disk; else None (also
    for a file that cannot be opened: the caller's slower path finds out why).

    Opened with ``openat2(2)`` and ``RESOLVE_CACHED``, which fails with ``EAGAIN``
    rather than read a directory or an inode from the disk. An event loop's plain
    ``open`` of a block file whose name the kernel has forgotten (after a while, or a
    ``drop_caches``) waits for that read behind the disk's queue: measured on a node
    under a fresh mount's sequential read, 3 ms a request (10 ms at the 90th
    percentile), during which the node's loop neither sent nor took a request
    (``loadtest/results/mount.md``). A kernel before 5.12 gets a plain ``open``.
    """
    global _OPENAT2
    if _OPENAT2 is not None:
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
        fd = _libc.syscall(
            ctypes.c_long(_OPENAT2),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        if ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None  # EAGAIN: not all in memory; or absent, or not readable
        _OPENAT2 = None  # an older kernel (or seccomp): plain opens from now on
    return _open_or_none(path)


def _open_or_none(path: str) -> int | None:
    """``path`` opened for reading; None if it cannot be (absent, unreadable, a disk
    error): a probe's callers take any of those as "not here"."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def open_cached(
    path: str, nbytes: int, checksum: int, buf: bytearray | memoryview
) -> BlockFile | None:
    """The file at ``path``, open, if all of its ``nbytes`` are in the page cache and match
    ``checksum``; they are left in ``buf`` (``nbytes`` long). None means "not now": absent,
    not all in memory, or not as named; the caller then waits for the disk elsewhere.
    Never blocks on the disk, for the file's name (:func:`open_if_cached`) or its bytes
    (``RWF_NOWAIT``), and never starts a read of it: a block not all in the page cache is
    found so by :func:`resident` first."""
    fd = open_if_cached(path)
    if fd is None:
        return None
    if resident(fd, 0, nbytes) is False:
        os.close(fd)
        return None
    try:
        got = os.preadv(fd, (buf,), 0, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not all in the page cache; or a failing disk
        got = -1
    if got != nbytes or xxhash.xxh3_64_intdigest(buf) != checksum:
        os.close(fd)
        return None
    return BlockFile(fd, nbytes)


def _read_parts(
    fd: int, nbytes: int, start: int, stop: int, *, nowait: bool = False
) -> memoryview | None:
    """Bytes ``[start, stop)`` of the block in ``fd`` if the parts holding them match its
    trailer, else None (see :func:`read_part`)."""
    if not trailer_length(nbytes) or not 0 <= start < stop <= nbytes:
        return None
    first, last = start // PART_SIZE, (stop - 1) // PART_SIZE
    begin, end = first * PART_SIZE, min(nbytes, (last + 1) * PART_SIZE)
    want = bytearray(_DIGEST * (last - first + 1))
    digests = nbytes + _DIGEST * first
    if nowait and not (
        resident(fd, begin, end) is not False
        and resident(fd, digests, digests + len(want)) is not False
    ):
        return None  # not all in the page cache: a RWF_NOWAIT read would start reading it
    data = bytearray(end - begin)
    flags = os.RWF_NOWAIT if nowait else 0
    try:
        whole = os.preadv(fd, (want,), digests, flags) == len(want)
        whole = whole and os.preadv(fd, (data,), begin, flags) == len(data)
    except BlockingIOError:  # RWF_NOWAIT: some of it is on the disk
        return None
    if not whole:
        return None
    view = memoryview(data)
    if not _parts_match(view, want):
        return None
    return view[start - begin : stop - begin]


def _parts_match(data: memoryview, want: bytes | bytearray | memoryview) -> bool:
    """Whether consecutive parts ``data`` match their digests ``want`` (in order)."""
    for i in range(len(want) // _DIGEST):
        chunk = data[i * PART_SIZE : (i + 1) * PART_SIZE]
        if xxhash.xxh3_64_digest(chunk) != want[i * _DIGEST : (i + 1) * _DIGEST]:
            return False
    return True


def part_span(nbytes: int, start: int, stop: int) -> tuple[int, int, int, int] | None:
    """Where the parts that hold bytes ``[start, stop)`` of a block of ``nbytes`` are in
    its file: ``(begin, end)`` of their bytes and of their digests in the trailer; None
    for a block of one part (checked whole) or a range outside the block."""
    if not trailer_length(nbytes) or not 0 <= start < stop <= nbytes:
        return None
    first, last = start // PART_SIZE, (stop - 1) // PART_SIZE
    return (
        first * PART_SIZE,
        min(nbytes, (last + 1) * PART_SIZE),
        nbytes + _DIGEST * first,
        nbytes + _DIGEST * (last + 1),
    )


def range_in(file: memoryview, trailer: bytes, nbytes: int, start: int, stop: int) -> bytes | None:
    """Bytes ``[start, stop)`` of the block whose whole file (``nbytes`` of data, then its
    trailer) is ``file`` (a mapping of it, say), if the parts holding them match
    ``trailer`` (the file's, read once by a caller that reads many ranges of it); else
    None, as :func:`read_part`. The bytes are copied out first and the parts checked
    after, so a change to the file meanwhile fails the check."""
    span = part_span(nbytes, start, stop)
    if span is None:
        return None
    begin, end, digests, digests_end = span
    piece = bytes(file[start:stop])
    if not _parts_match(file[begin:end], trailer[digests - nbytes : digests_end - nbytes]):
        return None
    return piece


# -- writes ------------------------------------------------------------------------------


#: O_DIRECT alignment of buffer address, file offset and length: 4096 covers disks of
#: 512- and 4096-byte logical blocks.
DIRECT_ALIGN = 4096

_direct = threading.local()


def _aligned(data: bytes | bytearray | memoryview, nbytes: int) -> memoryview:
    """The first ``nbytes`` of ``data``, aligned for ``O_DIRECT``: ``data`` itself if it
    is a writable buffer at an aligned address (a read-only one cannot be asked), else
    a copy in this thread's page-aligned buffer (grown as needed, then reused: a fresh
    buffer would cost a page fault per page)."""
    view = memoryview(data)[:nbytes]
    with contextlib.suppress(TypeError):
        if ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN == 0:
            return view
    buf: mmap.mmap | None = getattr(_direct, "buf", None)
    if buf is None or len(buf) < nbytes:
        if buf is not None:
            buf.close()
        buf = _direct.buf = mmap.mmap(-1, max(nbytes, PART_SIZE), flags=mmap.MAP_PRIVATE)
    copy = memoryview(buf)[:nbytes]
    copy[:] = view
    return copy


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_block(
    tmp_path: str,
    final_path: str,
    data: bytes | bytearray | memoryview,
    *,
    direct: bool = False,
) -> None:
    """Write ``data`` and its trailer to ``tmp_path`` (which must not exist) and rename it
    to ``final_path``; on any error no file is left at ``tmp_path`` and the error is raised.

    No fsync: a block is a copy of data held elsewhere, and a file torn by a power loss
    fails its checksum on its next read and is fetched again.

    With ``direct`` the block's bytes up to the last :data:`DIRECT_ALIGN` boundary go to
    the disk with ``O_DIRECT``, from a reused aligned buffer, and only the rest and the
    trailer through the page cache. A buffered write of a block copies it into freshly
    allocated page cache pages (0.2 s of CPU per GiB where those pages are recycled,
    2.5 s on a VM whose freed memory goes back to the host), and pushes out of the page
    cache pages that are being read; ``O_DIRECT`` costs at most a copy into one reused
    buffer, none when ``data`` is already page-aligned.
    A file system that refuses ``O_DIRECT`` gets a buffered write.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    aligned = len(data) - len(data) % DIRECT_ALIGN if direct else 0
    fd = -1
    try:
        if aligned:
            try:
                fd = os.open(tmp_path, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                aligned = 0
        if fd < 0:
            fd = os.open(tmp_path, flags, 0o644)
        done = 0
        if aligned:
            done = os.write(fd, _aligned(data, aligned))
            # Back to buffered I/O for the unaligned rest (and for the rest of a short
            # direct write, whose end need not be aligned).
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        _write_all(fd, memoryview(data)[done:])
        _write_all(fd, part_trailer(data))
        os.close(fd)
        fd = -1
        os.rename(tmp_path, final_path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


#: Bytes :class:`StreamedBlockWrite` waits for before each ``O_DIRECT`` write while a
#: block arrives: large writes, and about four of them a 4 MiB block.
STREAM_STEP = 1024 * 1024


class StreamedBlockWrite:
    """:func:`write_block` of a buffer that is still being filled: its bytes go to the
    disk with ``O_DIRECT`` as they arrive (:meth:`advance`, on the thread that receives
    them), and once all are there and checked, the rest, the trailer and the rename
    (:meth:`finish`). A block fetched from an origin at ~90 MB/s a connection then waits
    after its last byte for the write of its last step only, not of all of it (about
    12 ms a 4 MiB block on a virtio disk), and a client waits for the block to be
    stored before it is answered.

    Until :meth:`finish` nothing is at the final name; :meth:`abort` (or a failed
    :meth:`finish`) removes the temporary file. Not thread-safe: one thread at a time.
    """

    def __init__(self, tmp_path: str, buf: memoryview) -> None:
        self._tmp = tmp_path
        self._buf = buf
        self._fd = -1
        self._direct = True
        self._written = 0  # bytes at the start of the file, written with O_DIRECT

    def advance(self, received: int) -> None:
        """Write what is new in the first ``received`` bytes, once a step has come."""
        end = received - received % DIRECT_ALIGN
        if self._direct and end - self._written >= STREAM_STEP:
            self._write_direct(end)

    def finish(self, final_path: str) -> None:
        """Write the rest and the trailer and rename the file to ``final_path``; on any
        error no file is left and the error is raised."""
        try:
            nbytes = len(self._buf)
            if self._direct:
                self._write_direct(nbytes - nbytes % DIRECT_ALIGN)
            fd = self._open()
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if flags & os.O_DIRECT:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            os.lseek(fd, self._written, os.SEEK_SET)
            _write_all(fd, self._buf[self._written :])
            _write_all(fd, part_trailer(self._buf))
            self._fd = -1
            os.close(fd)
            os.rename(self._tmp, final_path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and remove the temporary file, if there is one."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)

    def _open(self) -> int:
        if self._fd < 0:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                self._fd = os.open(self._tmp, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._fd = os.open(self._tmp, flags, 0o644)
                self._direct = False
        return self._fd

    def _write_direct(self, end: int) -> None:
        """``O_DIRECT`` writes up to ``end`` (aligned); a short write ends them (the rest
        goes through the page cache, as in :func:`write_block`)."""
        fd = self._open()
        while self._direct and self._written < end:
            n = os.pwrite(fd, self._buf[self._written : end], self._written)
            self._written += n
            if n == 0 or self._written % DIRECT_ALIGN:
                self._direct = False
