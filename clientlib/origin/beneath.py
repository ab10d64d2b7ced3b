"""Opening a path beneath a directory, never through a symlink or out of it.

This is what keeps a node's ``file://`` origin inside its ``--file-root``: a path checked
against the root and then opened by name could be swapped for a symlink in between, so
:func:`open_beneath` resolves the path relative to an fd of the root and refuses, at every
component and at the moment of the open, symlinks (``ELOOP``) and anything that would leave
the directory (``EXDEV``). The fd it returns names the very file that was checked.

It uses ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``
(Linux 5.6 and later). Where the kernel (or a seccomp filter) has no ``openat2``, it walks
the path one component at a time with ``O_NOFOLLOW``, each opened relative to the last,
which refuses the same things.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading

__all__ = ["open_beneath", "split_relative"]

#: ``openat2``'s number is the same on every architecture (it came after the unified table).
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_probe_lock = threading.Lock()
_have_openat2: bool | None = None


def split_relative(rel: str) -> list[str]:
    """The components of a relative path; ``BadRequest``-worthy names raise ``ValueError``.

    Empty components (``a//b``, a trailing ``/``) are dropped; ``.`` and ``..`` are refused
    rather than resolved, so a path means what it says lexically.
    """
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in parts) or rel.startswith("/") or "\0" in rel:
        raise ValueError(f"not a normalised relative path: {rel[:200]!r}")
    return parts


def _openat2(dir_fd: int, rel: bytes, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE)
    while True:
        fd = _libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_long(dir_fd),
            ctypes.c_char_p(rel),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a rename raced with the lookup; EINTR: a signal. Both are worth a retry.
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), rel.decode(errors="replace"))


def _openat2_works() -> bool:
    global _have_openat2
    if _have_openat2 is None:
        with _probe_lock:
            if _have_openat2 is None:
                try:
                    os.close(_openat2(-100, b".", os.O_PATH | os.O_CLOEXEC))  # AT_FDCWD
                    _have_openat2 = True
                except OSError as exc:
                    # ENOSYS: an old kernel; EPERM: a seccomp filter that predates openat2.
                    if exc.errno not in (errno.ENOSYS, errno.EPERM):
                        raise
                    _have_openat2 = False
    return _have_openat2


def _walk(dir_fd: int, parts: list[str], flags: int) -> int:
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    at = dir_fd
    try:
        for name in parts[:-1]:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
            if at != dir_fd:
                os.close(at)
            at = fd
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                raise OSError(errno.ELOOP, "a symlink is not followed here", name)
            if not stat.S_ISDIR(mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=at)
        except NotADirectoryError:
            # O_DIRECTORY | O_NOFOLLOW on a symlink: say ELOOP, as openat2 does.
            if stat.S_ISLNK(os.stat(parts[-1], dir_fd=at, follow_symlinks=False).st_mode):
                raise OSError(errno.ELOOP, "a symlink is not followed here", parts[-1]) from None
            raise
        # O_PATH | O_NOFOLLOW opens a symlink itself rather than failing with ELOOP.
        if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ELOOP, "a symlink is not followed here", parts[-1])
        return fd
    finally:
        if at != dir_fd:
            os.close(at)


def open_beneath(dir_fd: int, rel: str, flags: int, *, use_openat2: bool | None = None) -> int:
    """An fd for ``rel`` beneath the directory ``dir_fd`` (``""``: that directory itself).

    ``flags`` are ``os.open`` flags without ``O_CREAT``; ``O_CLOEXEC`` is added. Raises
    ``OSError``: ``ELOOP`` for a symlink anywhere on the path, ``EXDEV`` for a way out
    (``openat2`` only; the walk refuses those names up front), ``ValueError`` for a path
    with ``.`` or ``..``. ``use_openat2=False`` forces the component walk (tests).
    """
    if flags & os.O_CREAT:
        raise ValueError("open_beneath does not create files")
    parts = split_relative(rel)
    flags |= os.O_CLOEXEC
    if use_openat2 is None:
        use_openat2 = _openat2_works()
    if use_openat2:
        return _openat2(dir_fd, os.fsencode("/".join(parts) or "."), flags)
    return _walk(dir_fd, parts, flags)
