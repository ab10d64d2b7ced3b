"""The one byte range of a block or an object a request asks for (``Range: bytes=...``).

Readers of a few KiB (a Parquet footer, a seek into an index) ask for just those instead
of the whole block (a node's block routes) or object (the S3 gateway). One range only: a
client that wants several parts asks for the whole. A range that cannot be served is a
:class:`clientlib.errors.RangeNotSatisfiable` (416).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from clientlib.errors import RangeNotSatisfiable

__all__ = ["Span", "parse_range"]

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)


class Span(NamedTuple):
    """The part of a block a request asks for: ``[start, stop)`` of ``length``."""

    start: int
    stop: int
    length: int

    @classmethod
    def whole(cls, length: int) -> Span:
        return cls(0, length, length)

    @property
    def nbytes(self) -> int:
        return self.stop - self.start

    @property
    def partial(self) -> bool:
        return self.stop - self.start != self.length

    @property
    def part(self) -> tuple[int, int]:
        """``(start, stop)``, as :meth:`BlockStore.open_block` takes it."""
        return self.start, self.stop

    @property
    def status(self) -> int:
        return 206 if self.partial else 200

    def headers(self) -> dict[str, str]:
        if not self.partial:
            return {}
        return {"Content-Range": f"bytes {self.start}-{self.stop - 1}/{self.length}"}


def parse_range(values: Sequence[str], length: int) -> Span:
    """The span of a block of ``length`` bytes that the ``Range`` header ``values`` ask
    for (all of it with none): ``bytes=A-B``, ``bytes=A-`` or ``bytes=-N``, ASCII
    digits; the end is clamped to the block's."""
    if not values:
        return Span.whole(length)
    if len(values) > 1:
        raise RangeNotSatisfiable("several Range headers: one range only")
    header = values[0]
    match = _RANGE_RE.fullmatch(header)
    if match is None:
        raise RangeNotSatisfiable("bad Range header: range not in acceptable format")
    try:
        asked = _slice(*match.groups())
    except ValueError as exc:  # also int()'s limit on digits
        raise RangeNotSatisfiable(f"bad Range header: {exc}") from None
    if asked is None:
        raise RangeNotSatisfiable(f"Range {header[:100]!r} asks for no bytes")
    within = range(length)[asked]
    if not within:
        raise RangeNotSatisfiable(
            f"Range {header[:100]!r} is not inside the block's {length} bytes"
        )
    return Span(within.start, within.stop, length)


def _slice(first: str, last: str) -> slice | None:
    """The slice ``bytes=first-last`` asks for; None for the empty suffix ``-0``."""
    if not first and not last:
        raise ValueError("No start or end of range specified")
    if not first:
        suffix = int(last)
        return slice(-suffix, None) if suffix else None
    start = int(first)
    if not last:
        return slice(start, None)
    stop = int(last) + 1
    if start >= stop:
        raise ValueError("start cannot be after end")
    return slice(start, stop)
