"""HTTP/1.1 request heads as the hit fast path reads them (:mod:`cachenode.fasthits`).

Strict on purpose: a head that is not plainly a block GET is not an error here, it is
aiohttp's to answer, so unusual but valid requests still work and malformed ones get
aiohttp's 400. Only what can never become a valid head is refused here (with a whole
response from :func:`refusal`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "BAD_HEAD",
    "HEAD_TOO_LARGE",
    "MAX_HEAD",
    "MAX_PARTIAL_HEAD",
    "BlockGetHead",
    "could_be_head",
    "parse_head",
    "refusal",
]

#: A complete request head longer than this is left to aiohttp (which has its own limits).
MAX_HEAD = 8190
#: An incomplete request head longer than this is refused (431) and its connection closed.
MAX_PARTIAL_HEAD = 64 * 1024

#: A plain block GET head, up to the CRLF of its last header: the request line, then
#: header lines with token names and visible-ASCII values (no obs-fold, no obs-text).
_HEAD_RE = re.compile(
    rb"GET (/v1/blocks/([0-9a-f]{32})(?:\?([!-~]*))?) HTTP/1\.1\r\n"
    rb"((?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*)"
)
#: What an incomplete request head can still become: a request line (method, target,
#: version) and header lines, with no bare CR or LF and no control bytes.
_PARTIAL_HEAD_RE = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]*(?: [!-~]*(?: [!-~]*)?)?"
    rb"(?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]*(?::[\t -~\x80-\xff]*)?)*\r?"
)
#: The headers the fast path looks at: those that make a request more than a plain GET
#: (a ``Range`` makes it a range GET), and the two it uses.
_SPECIAL_RE = re.compile(
    rb"^(content-length|transfer-encoding|expect|upgrade|authorization|connection|range):"
    rb"[\t ]*(.*?)[\t ]*\r$",
    re.IGNORECASE | re.MULTILINE,
)


def refusal(status: int, reason: str, message: str) -> bytes:
    """A whole response that refuses a request and closes its connection."""
    body = b'{"error": "%s"}' % message.encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, reason.encode(), len(body), body)
    )


BAD_HEAD = refusal(400, "Bad Request", "malformed request head")
HEAD_TOO_LARGE = refusal(
    431, "Request Header Fields Too Large", f"request head over {MAX_PARTIAL_HEAD} bytes"
)


class BlockGetHead(NamedTuple):
    """What the fast path needs from a block GET's head."""

    target: str  # path and query, as signed
    block_id: str
    query: str
    authorization: str | None
    close: bool
    #: The value of its one ``Range`` header (unchecked here: :func:`clientlib.ranges.
    #: parse_range` decides it, as it does for aiohttp's route); None for a plain GET.
    range: str | None


def parse_head(head: bytes | bytearray) -> BlockGetHead | None:
    """The request head (up to the CRLF of its last header) if it is a block GET with no
    body, no upgrade, no ``Expect`` and at most one ``Range`` header (several are
    aiohttp's to refuse), else None."""
    match = _HEAD_RE.fullmatch(head)
    if match is None:
        return None
    target, block_id, query, headers = match.groups()
    authorization = None
    close = False
    range_value = None
    for special in _SPECIAL_RE.finditer(headers):
        name, value = special.groups()
        name = name.lower()
        if name == b"authorization" and authorization is None:
            authorization = value.decode()
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = b"close" in tokens
        elif name == b"range" and range_value is None:
            range_value = value.decode("ascii")
        else:
            # a body, an upgrade, an expectation, a second Authorization or Range
            return None
    return BlockGetHead(
        target.decode(),
        block_id.decode(),
        (query or b"").decode(),
        authorization,
        close,
        range_value,
    )


def could_be_head(partial: bytes | bytearray) -> bool:
    """Whether an incomplete request head can still become a valid one (if not, it is
    answered 400 at once: aiohttp's parser might wait for more instead)."""
    return _PARTIAL_HEAD_RE.fullmatch(partial) is not None
