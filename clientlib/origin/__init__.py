"""Origin backends behind one interface, and the registry that picks one by URL scheme."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clientlib.errors import BadRequest, OriginError
from clientlib.origin.base import ObjectInfo, Origin
from clientlib.origin.local import FileOrigin
from clientlib.urls import split_url

__all__ = ["ObjectInfo", "Origin", "Origins"]


class Origins:
    """Hands out one shared :class:`Origin` per scheme; S3 is built on first use.

    ``file`` serves ``file://`` URLs instead of a :class:`FileOrigin` of ``file_roots``
    (a wrapped or instrumented one).
    """

    def __init__(
        self,
        file_roots: list[Path] | None = None,
        max_inflight: int = 32,
        *,
        file: FileOrigin | None = None,
    ) -> None:
        self._file = file if file is not None else FileOrigin(file_roots)
        self._s3: Origin | None = None
        self._max_inflight = max_inflight
        self._building = asyncio.Lock()

    def for_url(self, url: str) -> Origin:
        """The backend for ``url``, built here if need be (sync callers; see :meth:`get`)."""
        origin, _ = split_url(url)
        if origin == "file://":
            return self._file
        if origin.startswith("s3://"):
            if self._s3 is None:
                self._s3 = self._make_s3()
            return self._s3
        raise BadRequest(f"no origin for {url[:200]!r}")

    async def get(self, url: str) -> Origin:
        """The backend for ``url``, building the S3 one on a thread.

        Importing boto3 and making its client costs most of a second of CPU; on the event
        loop that would stall every request a node or a mount has in flight at its first
        S3 miss.
        """
        if self._s3 is None and split_url(url)[0].startswith("s3://"):
            await self.prepare_s3()
        return self.for_url(url)

    async def prepare_s3(self) -> None:
        """Build the S3 backend now, on a thread (a node does at start, so that its
        first miss does not pay for boto3)."""
        async with self._building:
            if self._s3 is None:
                self._s3 = await asyncio.to_thread(self._make_s3)

    def check(self, url: str) -> None:
        """Refuse now what the backend of ``url`` would refuse (no request to an object
        store; a node's file origin looks the path up beneath its root)."""
        if split_url(url)[0] == "file://":
            self._file.check(url)

    def _make_s3(self) -> Origin:
        import botocore.exceptions  # boto3 is slow to import

        from clientlib.origin.s3 import S3Origin

        try:
            return S3Origin(max_inflight=self._max_inflight)
        except botocore.exceptions.BotoCoreError as exc:
            raise OriginError(f"cannot set up the S3 client: {exc}") from None

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()
