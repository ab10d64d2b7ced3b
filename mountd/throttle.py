"""Bandwidth caps of one mount: ``--download-limit`` and ``--upload-limit`` (bytes/s).

Each is one token bucket (aiolimiter's leaky bucket, ``rate`` bytes per second, so up
to one second's worth may go at once after an idle spell) shared by every transfer of
the mount in that direction:

- download: every block the mount pulls in through the client, whether a cache node or
  the origin (the client's fallback) served it, for reads, prefetch and the copy of an
  object opened for rewriting. Blocks already on this machine (the client's memory tier,
  the ``--local-cache`` disk tier, the kernel's page cache) cost nothing. A block is
  charged, whole, before it is fetched.
- upload: the bytes of every upload to the origin (``close``/``fsync`` of a written
  file), charged as boto3 (or the file copy) reads them to send, so a multipart upload's
  parallel parts share the cap. Pushing the written blocks to the cache nodes afterwards
  (fill-on-write, best effort) is not counted, nor are metadata requests.

A bucket is acquired in pieces of at most ``min(rate, 1 MiB)``: aiolimiter refuses one
acquisition larger than its capacity, and small pieces keep concurrent readers fair.
"""

from __future__ import annotations

import asyncio
import threading
import time

from aiolimiter import AsyncLimiter

from mountd.metrics import LIMIT_WAIT, LIMITED_BYTES

__all__ = ["PIECE", "Throttle", "UploadMeter"]

#: Largest piece acquired from a bucket at once.
PIECE = 1024 * 1024


class Throttle:
    """A byte rate shared by all of one direction's transfers (``rate`` bytes/s)."""

    def __init__(self, rate: int, direction: str) -> None:
        if rate <= 0:
            raise ValueError("a rate must be positive")
        self.rate = rate
        self.direction = direction
        self._limiter = AsyncLimiter(rate, 1.0)
        self._piece = min(rate, PIECE)
        self._loop = asyncio.get_running_loop()

    async def charge(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more may go."""
        if nbytes <= 0:
            return
        started = time.monotonic()
        LIMITED_BYTES.labels(self.direction).inc(nbytes)
        while nbytes > 0:
            piece = min(nbytes, self._piece)
            await self._limiter.acquire(piece)
            nbytes -= piece
        LIMIT_WAIT.labels(self.direction).inc(time.monotonic() - started)

    def charge_blocking(self, nbytes: int) -> None:
        """:meth:`charge` from a worker thread (never from the event loop's own)."""
        asyncio.run_coroutine_threadsafe(self.charge(nbytes), self._loop).result()


class UploadMeter:
    """An upload's progress callback that charges a :class:`Throttle` as bytes are sent.

    boto3 reports progress every few KiB, from several threads for a multipart upload;
    the meter charges in pieces of ``PIECE`` bytes (one cross-thread call each) and
    :meth:`settle` charges the rest when the upload is over. A retry's rewind (negative
    progress) is not refunded: the bytes were sent.
    """

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle
        self._pending = 0
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._lock:
            self._pending += nbytes
            if self._pending < PIECE:
                return
            take, self._pending = self._pending, 0
        self._throttle.charge_blocking(take)

    async def settle(self) -> None:
        with self._lock:
            take, self._pending = self._pending, 0
        await self._throttle.charge(take)
