"""Running mountd as a daemon whose parent exits with the start-up verdict.

The parent of :func:`daemonize` waits until the child reports "ok" (mounted) or the
reason the start failed, so ``mountd ... && ls MOUNTPOINT`` works and a failure is the
command's exit status with a one-line reason.
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["daemonize", "report"]

_reported: set[int] = set()


def daemonize() -> int:
    """Fork and detach; the parent exits with the child's verdict. Returns the report fd."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        message = b"".join(chunks).decode(errors="replace")
        if message == "ok":
            sys.exit(0)
        print(f"mountd: error: {message or 'the daemon died at start'}", file=sys.stderr)
        sys.exit(1)
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return write_end


def report(fd: int | None, message: str) -> None:
    """Tell the waiting parent how the start went ("ok" or the reason): once only."""
    if fd is not None and fd not in _reported:
        _reported.add(fd)
        with contextlib.suppress(OSError):
            os.write(fd, message.encode())
            os.close(fd)
