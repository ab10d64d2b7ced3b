"""Origin backends behind one interface, and the registry that picks one by URL scheme."""

from __future__ import annotations

from pathlib import Path

from clientlib.errors import BadRequest
from clientlib.origin.base import ObjectInfo, Origin
from clientlib.origin.local import FileOrigin
from clientlib.urls import split_url

__all__ = ["ObjectInfo", "Origin", "Origins"]


class Origins:
    """Hands out one shared :class:`Origin` per scheme; S3 is built on first use."""

    def __init__(self, file_roots: list[Path] | None = None, max_inflight: int = 32) -> None:
        self._file = FileOrigin(file_roots)
        self._s3: Origin | None = None
        self._max_inflight = max_inflight

    def for_url(self, url: str) -> Origin:
        origin, _ = split_url(url)
        if origin == "file://":
            return self._file
        if origin.startswith("s3://"):
            if self._s3 is None:
                from clientlib.origin.s3 import S3Origin  # boto3 is slow to import

                self._s3 = S3Origin(max_inflight=self._max_inflight)
            return self._s3
        raise BadRequest(f"no origin for {url[:200]!r}")

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()
