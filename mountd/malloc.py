"""glibc malloc tuning so freed block buffers are reused rather than unmapped.

A block buffer (4 MiB) is above glibc's default mmap threshold, so each block a reader
fetches would be a fresh mapping whose pages are faulted in and zeroed, and unmapped again
when the block is freed; a warm sequential read through the mount is CPU-bound in this one
process, and that churn is a large share of it. With the mmap threshold above the block
size and a trim threshold of a few dozen blocks, freed blocks stay in the heap and the next
ones reuse their pages.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["reuse_block_memory"]

log = logging.getLogger(__name__)

# mallopt(3) parameters from glibc's malloc.h. The mmap threshold is the largest that
# older glibc versions accept (half of a 64-bit heap's 64 MiB): blocks up to 32 MiB (the
# default is 4 MiB) then come from the heap; larger ones are still mapped one by one.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: Free memory glibc may keep at the top of the heap for the next blocks.
_TRIM_THRESHOLD = 128 * 1024 * 1024


def reuse_block_memory() -> None:
    """Best effort: raise glibc's mmap and trim thresholds. Not glibc (musl, macOS): no-op."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt: block buffers keep the C library's allocation policy")
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    ):
        log.info("mallopt refused the thresholds: block buffers are mapped one by one")
