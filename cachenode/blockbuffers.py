"""Page-aligned buffers for blocks a node fetches to store, not to send (warmup).

Such a block is received from the origin into one of these, checked, and written to its
block file with ``O_DIRECT`` from the same pages (:func:`clientlib.blockfile.write_block`):
no bytes object per block, no copy but the kernel's from the socket. The buffers are
reused because fresh pages are what a block's memory costs most: a page fault and a
zeroed page each (on a VM whose freed memory goes back to the host, a fault in the host
too), about as much CPU as receiving the bytes.
"""

from __future__ import annotations

import mmap

__all__ = ["BlockBuffers"]


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
        else:
            buf.close()
