"""A GET's body received in a few wakeups, not one per TCP burst (``SO_RCVLOWAT``).

An origin that paces each connection (S3 sends ~90 MB/s a connection) delivers a body a
burst at a time, and a thread reading it with plain ``recv`` wakes for each burst: a
``poll``, a ``recv`` and a round trip through the GIL every ~240 KiB, about 18 wakeups
and 160 ``futex`` calls a 4 MiB block on a node (``strace -c``, the cold phase of
``loadtest/bench_mount.py``), which the event loop thread pays for too. With the
socket's receive low-water mark raised, ``poll`` and ``recv`` return only once that many
bytes are queued, so a block takes about seven wakeups.

The mark must never exceed the bytes still to come, or the wait lasts until the read
timeout. Bytes of the body may already sit above the socket: in the response's read
buffer (8 KiB) and, on TLS, in a record the TLS library has only partly returned (16
KiB and its overhead); :data:`SLACK` covers both. Each read therefore asks for at most
half of what is left beyond the slack, with the mark at that size, so that even a read
the kernel cuts short (its window nearly full) waits only for bytes that are coming;
the last bytes are read with the mark back at 1, and so is the next answer's head.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Callable

__all__ = ["receive_into"]

#: Bytes a wakeup waits for at most: a 4 MiB block in about seven.
STEP = 1024 * 1024
#: Body bytes that may be held above the socket (see the module doc), with room to spare.
SLACK = 64 * 1024


def receive_into(
    resp: http.client.HTTPResponse,
    sock: socket.socket | None,
    buf: memoryview,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Read ``resp``'s body into ``buf`` until it is full or the body ends; the bytes
    read. ``sock`` is the connection's socket (None: read without a mark); ``progress``
    is called with the bytes read so far after each read but the last."""
    done, size = 0, len(buf)
    marked = False
    try:
        while done < size:
            left = size - done
            mark = min(STEP, (left - SLACK) // 2) if sock is not None else 0
            if mark > SLACK:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)  # type: ignore[union-attr]
                marked, want = True, mark
            else:
                if marked:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)  # type: ignore[union-attr]
                    marked = False
                want = left
            got = resp.readinto(buf[done : done + want])
            if not got:
                break
            done += got
            if progress is not None and done < size:
                progress(done)
    finally:
        if marked:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)  # type: ignore[union-attr]
    return done
