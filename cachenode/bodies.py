"""Request bodies a node holds in memory: bounded in number, in bytes and in time.

A body is read into memory before it is checked (a fill's 4 MiB block, a batch of ids),
so without a bound a few clients that send all but the last byte of 64 MiB bodies would
grow a node by a gigabyte and keep it there. :class:`BodyBudget` admits a body only if
it fits under both the count and the byte limit *before* reading it, refuses the rest at
once (``503``, retry later: fills are best effort and batch callers retry), and gives each
body a deadline to arrive in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from clientlib.errors import BadRequest, RingcacheError

__all__ = ["BodyBudget", "Busy"]

log = logging.getLogger(__name__)

#: Bodies being read at once, and their bytes together, per node.
MAX_BODIES = 16
MAX_BODY_BYTES = 128 * 1024 * 1024
#: Seconds a body has to arrive in full once its head is in (64 MiB at 2.3 MB/s).
BODY_TIMEOUT = 30.0


class Busy(RingcacheError):
    """The node holds as many request bodies as it may: try again shortly."""

    http_status = 503


class BodyBudget:
    """Admission of request bodies into memory; see the module docstring."""

    def __init__(
        self,
        max_bodies: int = MAX_BODIES,
        max_bytes: int = MAX_BODY_BYTES,
        timeout: float = BODY_TIMEOUT,
    ) -> None:
        self._max_bodies = max_bodies
        self._max_bytes = max_bytes
        self._timeout = timeout
        self.bodies = 0
        self.bytes = 0

    @contextlib.asynccontextmanager
    async def admit(self, nbytes: int) -> AsyncIterator[None]:
        """Hold room for a body of ``nbytes`` while the caller reads and uses it."""
        if self.bodies >= self._max_bodies or self.bytes + nbytes > self._max_bytes:
            raise Busy(
                f"{self.bodies} request bodies ({self.bytes} bytes) in flight already; "
                "retry shortly"
            )
        self.bodies += 1
        self.bytes += nbytes
        try:
            yield
        finally:
            self.bodies -= 1
            self.bytes -= nbytes

    async def read(self, request: web.Request) -> bytes:
        """The whole body of ``request`` (whose size the caller admitted), within the
        deadline; a body that stalls or ends short is a :class:`BadRequest`."""
        try:
            async with asyncio.timeout(self._timeout):
                data = await request.read()
        except TimeoutError:
            raise BadRequest(f"request body not received within {self._timeout:.0f}s") from None
        except ConnectionError as exc:
            raise BadRequest(f"truncated body: {exc}") from None
        if request.content_length is not None and len(data) != request.content_length:
            raise BadRequest(
                f"body has {len(data)} bytes, Content-Length said {request.content_length}"
            )
        return data
