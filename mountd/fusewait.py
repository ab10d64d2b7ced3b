"""Waiting for the FUSE device to have a request, without a new poll registration each time.

pyfuse3's asyncio mode waits for each request with ``loop.add_reader`` and removes the
reader when the request has come (``pyfuse3.asyncio.wait_readable``): two ``epoll_ctl``
calls, a poll handle made and closed (uvloop), a future and two callbacks a request,
about 10 us of CPU on this project's VM, against 2 us for a future woken by a reader that
stays registered. At a few thousand random reads a second that is a tenth of the
mount's CPU per read.

:func:`install` replaces the wait with one that keeps the reader registered while a
worker waits and for as long as requests keep coming; the reader is removed only when it
finds the device readable with nobody waiting :data:`IDLE_WAKEUPS` turns in a row (a
level-triggered poll would otherwise wake the loop on every turn until a worker is
back), and added again by the next wait.
It keeps pyfuse3's contract: a wait ends when the device is readable, and with
``ClosedResourceError`` when pyfuse3 announces that the device is about to be closed
(``notify_closing``, from ``pyfuse3.terminate``).
"""

from __future__ import annotations

import asyncio

import pyfuse3.asyncio

__all__ = ["install", "release"]


#: Turns of the event loop that may find the device readable with no worker waiting
#: before its reader is removed. Between one worker taking a request and the next one
#: waiting, the loop polls once, and the reader's next request is often there by then:
#: removing the reader at once cost a registration a request again.
IDLE_WAKEUPS = 2


class _Device:
    """The reader of one FUSE device fd and the wait it serves (pyfuse3 lets one worker
    wait at a time: its read lock)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.waiter: asyncio.Future[None] | None = None
        self.registered = False
        self.idle = 0  # turns in a row that found the device readable and nobody waiting

    async def wait(self) -> None:
        waiter = self.waiter = self.loop.create_future()
        if not self.registered:
            self.loop.add_reader(self.fd, self._readable)
            self.registered = True
        try:
            await waiter
        finally:
            self.waiter = None

    def _readable(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.idle = 0
            waiter.set_result(None)
            return
        self.idle += 1
        if self.idle >= IDLE_WAKEUPS:
            self.unregister()

    def unregister(self) -> None:
        if self.registered:
            self.loop.remove_reader(self.fd)
            self.registered = False
        self.idle = 0

    def close(self) -> None:
        self.unregister()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(pyfuse3.asyncio.ClosedResourceError())


_devices: dict[int, _Device] = {}


async def _wait_readable(fd: int) -> None:
    device = _devices.get(fd)
    if device is None:
        device = _devices[fd] = _Device(asyncio.get_running_loop(), fd)
    await device.wait()


def _notify_closing(fd: int) -> None:
    device = _devices.pop(fd, None)
    if device is not None:
        device.close()


def install() -> None:
    """Make pyfuse3 (in asyncio mode: call after ``pyfuse3.asyncio.enable()``) wait for
    requests with :func:`_wait_readable`."""
    pyfuse3.asyncio.wait_readable = _wait_readable  # type: ignore[assignment]
    pyfuse3.asyncio.notify_closing = _notify_closing  # type: ignore[assignment]


def release() -> None:
    """Unregister the readers of every device (call once ``pyfuse3.main`` has returned,
    before ``pyfuse3.close`` closes the device)."""
    while _devices:
        _devices.popitem()[1].unregister()
