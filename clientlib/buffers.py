"""Block-sized buffers that are not cleared before use.

``bytearray(n)`` zeroes its memory; a buffer that a socket or a disk read is about to
overwrite whole pays for that clearing for nothing, and at a mount's few hundred MB/s
it was a measurable share of the CPU (py-spy: 8-17% of the event loop during a
sequential read). Such a buffer's bytes are whatever the allocator's memory held
before, so a caller hands one out only once every byte it exposes has been written.
"""

from __future__ import annotations

import ctypes

__all__ = ["unfilled", "unfilled_aligned"]

_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_new_bytearray.restype = ctypes.py_object


def unfilled(length: int) -> bytearray:
    """A ``bytearray`` of ``length`` bytes as the allocator gave them, not zeroed."""
    return _new_bytearray(None, length)


def unfilled_aligned(length: int, align: int) -> memoryview:
    """``length`` unzeroed bytes starting at an address that is a multiple of ``align``
    (a power of two), for ``O_DIRECT``: a view into a slightly larger ``bytearray``,
    which lives as long as the view does."""
    buf = unfilled(length + align)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    skip = -address % align
    return memoryview(buf)[skip : skip + length]
