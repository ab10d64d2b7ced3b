"""Page-aligned buffers for blocks a node fetches from the origin, and their loans.

Such a block is received from the origin into one of these, checked, and written to its
block file with ``O_DIRECT`` from the same pages (:func:`clientlib.blockfile.write_block`):
no bytes object per block, no copy but the kernel's from the socket. The buffers are
reused because fresh pages are what a block's memory costs most: a page fault and a
zeroed page each (on a VM whose freed memory goes back to the host, a fault in the host
too), about as much CPU as receiving the bytes.

A block fetched for clients (a miss) is then sent to them from the same buffer
(:class:`Loan`): it goes back to the pool only once every client's send is flushed, so
no copy is made for the clients and no client can get bytes of the next block.
"""

from __future__ import annotations

import contextlib
import mmap

__all__ = ["BlockBuffers", "Loan"]


class BlockBuffers:
    """Buffers handed out with :meth:`take` and given back with :meth:`give`; at most
    ``keep`` idle ones are kept (the others are unmapped). A buffer is at least
    ``unit`` bytes, so that one buffer serves a whole block and a short object tail."""

    def __init__(self, keep: int, unit: int) -> None:
        self._keep = keep
        self._unit = unit
        self._idle: list[mmap.mmap] = []

    def take(self, nbytes: int) -> mmap.mmap:
        """A buffer of at least ``nbytes``: an idle one if one is large enough."""
        for i, buf in enumerate(self._idle):
            if len(buf) >= nbytes:
                return self._idle.pop(i)
        return mmap.mmap(-1, max(nbytes, self._unit), flags=mmap.MAP_PRIVATE)

    def give(self, buf: mmap.mmap) -> None:
        """Take back a buffer nothing reads or writes any more."""
        if len(self._idle) < self._keep:
            self._idle.append(buf)
            return
        # A view of it may still be referenced (by a transport that sent from it): it
        # is unmapped when that goes.
        with contextlib.suppress(BufferError):
            buf.close()


class Loan:
    """A block's bytes shared by the fetch that receives them and the clients it is sent
    to: a buffer of :class:`BlockBuffers` (:meth:`lend`), or bytes (:attr:`data`).

    Each sharer holds the loan (:meth:`hold`, the fetch from the start) and lets go
    (:meth:`release`); the buffer goes back to its pool at the last release, unless a
    sharer failed midway (:meth:`spoil`: a cancelled write or an unfinished send may
    still read it), in which case it is only dropped.
    """

    __slots__ = ("_buf", "_holders", "_pool", "_spoiled", "_view", "data")

    def __init__(self, pool: BlockBuffers) -> None:
        self._pool = pool
        self._buf: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._holders = 1
        self._spoiled = False
        #: The block's bytes once the fetch has them (a view of the buffer, or bytes).
        self.data: bytes | memoryview | None = None

    def lend(self, nbytes: int) -> memoryview:
        """A buffer from the pool for ``nbytes``, owned by the loan from now on."""
        self._buf = self._pool.take(nbytes)
        self._view = self.data = memoryview(self._buf)[:nbytes]
        return self._view

    def hold(self) -> None:
        """One more sharer (before the fetch ends: see :class:`ReadThrough`)."""
        assert self._holders > 0, "a loan held after it was given back"
        self._holders += 1

    def spoil(self) -> None:
        """The buffer must not be reused: something may still read or write it."""
        self._spoiled = True

    def release(self) -> None:
        """A sharer is done; the last one gives the buffer back (or drops it)."""
        self._holders -= 1
        if self._holders > 0:
            return
        buf, view = self._buf, self._view
        self._buf = self._view = self.data = None
        if buf is None or view is None or self._spoiled:
            return
        try:
            view.release()
        except BufferError:  # still exported by someone: not safe to reuse
            return
        self._pool.give(buf)
