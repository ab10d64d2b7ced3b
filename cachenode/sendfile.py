"""Sending a verified block file to a client's socket with ``sendfile``.

Copying a large block through user memory to the socket costs CPU that ``sendfile``
does not (nginx sends the same files with it), and uvloop has no ``loop.sendfile``, so
this is done by hand: the body goes from the page cache to the socket in the kernel,
inline until the socket is full, then waiting for it to be writable. Both hit paths use
it: the fast path (:mod:`cachenode.fasthits`) and aiohttp's (:mod:`cachenode.blockroutes`).

Two rules both paths follow, kept here: ``sendfile`` only on a plain TCP connection
(:func:`plain_tcp`: on a TLS one it would put the bytes on the wire unencrypted), and only
once nothing the transport buffers is left to go before the file's bytes
(:func:`wait_flushed`: ``sendfile`` writes to the socket directly, past that buffer).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

__all__ = ["plain_tcp", "send_file", "send_now", "wait_flushed"]


def plain_tcp(transport: asyncio.BaseTransport) -> bool:
    """Whether block bytes may go to this connection's socket with ``sendfile``: not on
    TLS, whose records only the transport can write."""
    return transport.get_extra_info("sslcontext") is None


async def wait_flushed(
    transport: asyncio.WriteTransport, drained: Callable[[], Awaitable[None]]
) -> None:
    """Wait until ``transport`` buffers nothing, so ``sendfile`` bytes follow what it had.

    A high-water mark of 0 pauses the transport's protocol until its buffer is empty;
    ``drained`` is how that protocol waits for its ``resume_writing`` (aiohttp's writer's
    ``drain``, or the fast path's own). Raises :class:`ConnectionResetError` if the
    connection closes meanwhile.
    """
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await drained()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)
    if transport.is_closing():
        raise ConnectionResetError("connection closed while sending")


def send_now(out: int, fd: int, offset: int, nbytes: int) -> int:
    """``sendfile`` from ``offset`` until the socket is full or the file is sent.

    Returns the new offset. Raises :class:`OSError` if the file ends early.
    """
    while offset < nbytes:
        try:
            sent = os.sendfile(out, fd, offset, nbytes - offset)
        except BlockingIOError:
            return offset
        if sent == 0:
            raise OSError(f"block file ended at {offset} of {nbytes} bytes")
        offset += sent
    return offset


async def send_file(transport: asyncio.Transport, fd: int, nbytes: int, offset: int = 0) -> None:
    """``sendfile`` all of ``fd`` from ``offset`` to the transport's socket, waiting when
    it is full.

    The waiting part sends from a writability callback on a duplicate of the socket,
    registered once per body: a 4 MiB body meets a full socket several times, and a
    task wakeup or a new watch each time costs more than the ``sendfile`` itself. The
    duplicate also means that if the transport is closed meanwhile, and its fd number
    reused by another connection, that connection never receives this block's bytes
    (and uvloop refuses a writer on a transport's own fd).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionResetError("connection has no socket")
    offset = send_now(sock.fileno(), fd, offset, nbytes)
    if offset >= nbytes:
        return
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def on_writable() -> None:
        nonlocal offset
        if finished.done():
            return
        if transport.is_closing():
            finished.set_exception(ConnectionResetError("connection closed mid-body"))
            return
        try:
            offset = send_now(dup, fd, offset, nbytes)
        except OSError as exc:
            finished.set_exception(exc)
            return
        if offset >= nbytes:
            finished.set_result(None)

    dup = os.dup(sock.fileno())
    try:
        loop.add_writer(dup, on_writable)
        try:
            await finished
        finally:
            loop.remove_writer(dup)
    finally:
        os.close(dup)
