"""The kernel read-ahead of the mount, raised above FUSE's default.

FUSE's default (128 KiB) means one request per 128 KiB for a sequential reader; a larger
window lets the kernel send requests of up to 1 MiB, several at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

__all__ = ["READ_AHEAD_KB", "raise_read_ahead"]

log = logging.getLogger(__name__)

#: Kernel read-ahead of the mount, in KiB.
READ_AHEAD_KB = 4096


async def raise_read_ahead(mountpoint: str) -> None:
    """Best effort (needs root): set the read-ahead of the mount's backing device info.

    Only once the kernel has taken the INIT reply, which caps the read-ahead to the
    128 KiB libfuse answers with: a raise before that is undone. A stat of the mount
    point, answered by this process's FUSE loop, proves INIT is done. The bdi is found
    in /proc/self/mountinfo.
    """
    try:
        await asyncio.to_thread(os.stat, mountpoint)
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
        devices = [line.split()[2] for line in lines if line.split()[4] == mountpoint]
        if devices:
            Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")
    except (OSError, IndexError) as exc:
        log.info("kernel read-ahead of %s left at its default: %s", mountpoint, exc)
