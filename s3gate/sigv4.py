"""Verifying AWS Signature Version 4 on incoming S3 requests.

Two ways to sign, both checked here: the ``Authorization: AWS4-HMAC-SHA256`` header
(:func:`verify`) and a presigned URL (``X-Amz-Algorithm``... in the query). The
canonical request is rebuilt from what arrived (method, the path URI-encoded once as S3
does, the sorted query, the signed headers, the declared payload hash), the signing key
is derived from the secret of the access key, and the signatures are compared in
constant time. A request is refused outside its time window: a header-signed one more
than :data:`MAX_SKEW` seconds from now (``RequestTimeTooSkewed``), a presigned one before
its date (less the same skew) or after its ``X-Amz-Expires``.

The payload: a declared SHA-256 is checked against the body as it is read
(:class:`BodyHash`); ``UNSIGNED-PAYLOAD`` is taken as it is; aws-chunked bodies
(``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` and
``STREAMING-UNSIGNED-PAYLOAD-TRAILER``) are decoded by :class:`ChunkedDecoder`, which checks
every chunk's signature chained from the request's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from aiohttp import StreamReader
from multidict import CIMultiDictProxy

from s3gate.errors import S3Error

__all__ = [
    "MAX_SKEW",
    "UNSIGNED",
    "BodyHash",
    "ChunkedDecoder",
    "Signed",
    "canonical_query",
    "canonical_uri",
    "query_params",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})
SIGV4_ONLY = (
    "the authorization mechanism you have provided is not supported: use AWS4-HMAC-SHA256 "
    "(boto3: Config(signature_version='s3v4'))"
)
#: How far a signature's time may be from the gateway's clock (S3's 15 minutes).
MAX_SKEW = 15 * 60
MAX_EXPIRES = 7 * 24 * 3600
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX = frozenset("0123456789abcdef")
#: The largest chunk of an aws-chunked body (SDKs send 64 KiB to 1 MiB).
MAX_CHUNK = 16 * 1024 * 1024
#: The largest trailer (the header lines after the last chunk: a checksum, its signature).
MAX_TRAILER = 16 * 1024
#: The longest chunk header line (size, extensions) an aws-chunked body may have.
_MAX_CHUNK_LINE = 4096


def canonical_uri(raw_path: str) -> str:
    """The path as S3 signs it: decoded, then URI-encoded once (``/`` kept)."""
    return quote(unquote(raw_path), safe="/~")


def canonical_query(raw_query: str, skip: str = "") -> str:
    """The query as SigV4 signs it: every pair decoded, encoded again, sorted."""
    pairs: list[tuple[str, str]] = []
    for item in raw_query.split("&") if raw_query else ():
        name, _, value = item.partition("=")
        name, value = unquote(name), unquote(value)
        if name != skip:
            pairs.append((quote(name, safe="~"), quote(value, safe="~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The day's key of an access key's secret for ``region`` and ``service``."""
    key = _hmac(("AWS4" + secret).encode(), date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


@dataclass(frozen=True)
class Signed:
    """A request whose signature checked out: who signed it and what it says of its body."""

    access_key: str
    #: The declared payload: a SHA-256 (hex), ``UNSIGNED-PAYLOAD`` or a ``STREAMING-...``.
    payload: str
    key: bytes
    amz_date: str
    scope: str
    signature: str

    @property
    def streaming(self) -> bool:
        return self.payload in STREAMING


def _parse_amz_date(text: str, what: str) -> float:
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise S3Error(
            "AccessDenied", f"{what}: {text[:40]!r} is not a date like 20260102T030405Z"
        ) from None


def _credential(text: str, amz_date: str, bad: str) -> tuple[str, str, list[str]]:
    """``AK/DATE/REGION/s3/aws4_request`` -> access key, scope, scope parts."""
    parts = text.split("/")
    if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request":
        raise S3Error(
            bad, f"malformed credential {text[:200]!r}: want AK/DATE/REGION/s3/aws4_request"
        )
    if parts[1] != amz_date[:8]:
        raise S3Error(bad, f"credential date {parts[1]!r} is not the request's {amz_date[:8]!r}")
    return parts[0], "/".join(parts[1:]), parts


def _canonical_headers(headers: CIMultiDictProxy[str], signed: list[str], bad: str) -> str:
    lines = []
    for name in signed:
        values = headers.getall(name, None)
        if values is None:
            raise S3Error(bad, f"signed header {name!r} is missing")
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "".join(lines)


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: CIMultiDictProxy[str],
    secret_of: Callable[[str], str | None],
    now: float | None = None,
) -> Signed:
    """Check the SigV4 signature of a request, in its header or its query.

    ``secret_of`` gives the secret of an access key (``None`` if unknown). Raises
    :class:`S3Error`: ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``,
    ``RequestTimeTooSkewed``, ``AccessDenied`` (expired) or a malformed-request code.
    """
    now = time.time() if now is None else now
    query = query_params(raw_query)
    if "AWSAccessKeyId" in query:
        raise S3Error("InvalidRequest", SIGV4_ONLY)
    if "X-Amz-Algorithm" in query:
        return _verify_presigned(method, raw_path, raw_query, query, headers, secret_of, now)
    return _verify_header(method, raw_path, raw_query, headers, secret_of, now)


def query_params(raw_query: str) -> dict[str, str]:
    """The decoded parameters of a raw query string (the first value of each name)."""
    out: dict[str, str] = {}
    for item in raw_query.split("&") if raw_query else ():
        name, _, value = item.partition("=")
        out.setdefault(unquote(name), unquote(value))
    return out


def _verify_header(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: CIMultiDictProxy[str],
    secret_of: Callable[[str], str | None],
    now: float,
) -> Signed:
    bad = "AuthorizationHeaderMalformed"
    scheme, _, rest = headers.get("Authorization", "").partition(" ")
    if scheme != ALGORITHM:
        raise S3Error("InvalidRequest", SIGV4_ONLY)
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise S3Error(bad, "Authorization needs Credential, SignedHeaders and Signature")
    amz_date = headers.get("X-Amz-Date", "")
    if not amz_date:
        raise S3Error(bad, "X-Amz-Date is required with a SigV4 Authorization header")
    when = _parse_amz_date(amz_date, "X-Amz-Date")
    if abs(now - when) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed", "the difference between the request time and now is too large"
        )
    access_key, scope, parts = _credential(fields["Credential"], amz_date, bad)
    payload = headers.get("X-Amz-Content-SHA256", "")
    if not payload:
        raise S3Error("InvalidRequest", "missing required header x-amz-content-sha256")
    if payload not in STREAMING and payload != UNSIGNED and not _is_sha256(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be a SHA-256 (hex)")
    signed_headers = fields["SignedHeaders"]
    return _check(
        method, raw_path, canonical_query(raw_query), headers, signed_headers, payload,
        access_key, amz_date, scope, parts, fields["Signature"], secret_of, bad,
    )  # fmt: skip


def _verify_presigned(
    method: str,
    raw_path: str,
    raw_query: str,
    query: Mapping[str, str],
    headers: CIMultiDictProxy[str],
    secret_of: Callable[[str], str | None],
    now: float,
) -> Signed:
    bad = "AuthorizationQueryParametersError"
    need = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders")
    if query["X-Amz-Algorithm"] != ALGORITHM or any(n not in query for n in need):
        raise S3Error(bad, f"a presigned URL needs {ALGORITHM} and {', '.join(need)}")
    if "X-Amz-Signature" not in query:
        raise S3Error(bad, "a presigned URL needs X-Amz-Signature")
    amz_date = query["X-Amz-Date"]
    when = _parse_amz_date(amz_date, "X-Amz-Date")
    expires = query["X-Amz-Expires"]
    if not (expires.isascii() and expires.isdigit()) or not 0 < int(expires) <= MAX_EXPIRES:
        raise S3Error(bad, f"X-Amz-Expires must be 1 to {MAX_EXPIRES} seconds")
    if now < when - MAX_SKEW:
        raise S3Error("AccessDenied", "request is not valid yet")
    if now > when + int(expires):
        raise S3Error("AccessDenied", "request has expired")
    access_key, scope, parts = _credential(query["X-Amz-Credential"], amz_date, bad)
    payload = headers.get("X-Amz-Content-SHA256", UNSIGNED)
    return _check(
        method, raw_path, canonical_query(raw_query, skip="X-Amz-Signature"), headers,
        query["X-Amz-SignedHeaders"], payload, access_key, amz_date, scope, parts,
        query["X-Amz-Signature"], secret_of, bad,
    )  # fmt: skip


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


def _check(
    method: str,
    raw_path: str,
    query: str,
    headers: CIMultiDictProxy[str],
    signed_headers: str,
    payload: str,
    access_key: str,
    amz_date: str,
    scope: str,
    parts: list[str],
    signature: str,
    secret_of: Callable[[str], str | None],
    bad: str,
) -> Signed:
    names = signed_headers.split(";")
    if "host" not in names or names != sorted(names) or any(n != n.lower() for n in names):
        raise S3Error(bad, "SignedHeaders must be lower-case, sorted and include host")
    secret = secret_of(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "the AWS access key id does not exist in our records")
    key = signing_key(secret, parts[1], parts[2], parts[3])
    header_block = _canonical_headers(headers, names, bad)
    # The path as S3 re-encodes it; the path exactly as sent, for a client that encodes
    # some character S3 leaves alone. Either must match in full.
    for uri in dict.fromkeys((canonical_uri(raw_path), raw_path)):
        canonical = "\n".join((method, uri, query, header_block, signed_headers, payload))
        to_sign = "\n".join(
            (ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        want = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(want.encode(), signature.encode()):
            return Signed(access_key, payload, key, amz_date, scope, signature)
    raise S3Error(
        "SignatureDoesNotMatch",
        "the request signature we calculated does not match the signature you provided",
    )


class BodyHash:
    """Checks a body against the SHA-256 its signature declared, as it is read."""

    def __init__(self, declared: str) -> None:
        self._declared = declared
        self._hash = hashlib.sha256() if _is_sha256(declared) else None

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def check(self) -> None:
        """Raise ``XAmzContentSHA256Mismatch`` if the body was not the declared one."""
        if self._hash is not None and not hmac.compare_digest(
            self._hash.hexdigest(), self._declared
        ):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "the provided x-amz-content-sha256 does not match what was computed",
            )


class ChunkedDecoder:
    """The payload of an aws-chunked body, with each chunk's signature checked.

    ``content`` is the raw body. A signed stream's chunk
    signatures chain from the request's (``previous`` signature in each string to sign),
    so a chunk cannot be dropped, reordered or replaced; a trailer, if any, is signed
    the same way. An unsigned stream (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``) carries
    only what its request signature covered: headers, not the body.
    """

    def __init__(self, signed: Signed, content: StreamReader) -> None:
        self._signed = signed
        self._content = content
        self._previous = signed.signature
        self._verify = signed.payload != STREAMING_UNSIGNED_TRAILER

    async def chunks(self) -> AsyncIterator[bytes]:
        """The decoded payload, chunk by chunk (the trailer is read and checked)."""
        while True:
            line = await self._line()
            size_text, _, ext = line.partition(";")
            try:
                size = int(size_text, 16)
            except ValueError:
                raise S3Error("IncompleteBody", "malformed aws-chunked chunk size") from None
            if not 0 <= size <= MAX_CHUNK:
                raise S3Error(
                    "InvalidArgument", f"aws-chunked chunks are at most {MAX_CHUNK} bytes"
                )
            data = await self._exactly(size)
            if self._verify:
                name, _, sig = ext.partition("=")
                if name != "chunk-signature":
                    raise S3Error("SignatureDoesNotMatch", "aws-chunked chunk without a signature")
                self._check("AWS4-HMAC-SHA256-PAYLOAD", hashlib.sha256(data).hexdigest(), sig)
            if size == 0:
                await self._trailer()
                return
            if await self._exactly(2) != b"\r\n":
                raise S3Error("IncompleteBody", "aws-chunked chunk not followed by CRLF")
            yield data

    async def _exactly(self, size: int) -> bytes:
        try:
            return await self._content.readexactly(size)
        except asyncio.IncompleteReadError:
            raise S3Error("IncompleteBody", "the aws-chunked body ended early") from None

    async def _line(self) -> str:
        try:
            raw = await self._content.readuntil(b"\n")
        except (asyncio.IncompleteReadError, ValueError):
            raise S3Error("IncompleteBody", "malformed aws-chunked chunk header") from None
        if len(raw) > _MAX_CHUNK_LINE or not raw.endswith(b"\r\n"):
            raise S3Error("IncompleteBody", "the aws-chunked body ended early")
        try:
            return raw[:-2].decode("ascii")
        except UnicodeDecodeError:
            raise S3Error("IncompleteBody", "malformed aws-chunked chunk header") from None

    async def _trailer(self) -> None:
        lines: list[str] = []
        signature = ""
        size = 0
        while (line := await self._line()) != "":
            size += len(line) + 2
            if self._signed.payload == STREAMING_SIGNED or size > MAX_TRAILER:
                raise S3Error(
                    "InvalidRequest",
                    f"an aws-chunked trailer is at most {MAX_TRAILER} bytes, "
                    "and only with a -TRAILER payload",
                )
            name, _, value = line.partition(":")
            if name.lower() == "x-amz-trailer-signature":
                signature = value.strip()
            else:
                lines.append(f"{name.strip().lower()}:{value.strip()}\n")
        if self._signed.payload == STREAMING_SIGNED_TRAILER:
            digest = hashlib.sha256("".join(lines).encode()).hexdigest()
            self._check("AWS4-HMAC-SHA256-TRAILER", digest, signature, with_empty=False)

    def _check(self, kind: str, digest: str, signature: str, *, with_empty: bool = True) -> None:
        s = self._signed
        items = [kind, s.amz_date, s.scope, self._previous]
        if with_empty:
            items.append(EMPTY_SHA256)
        items.append(digest)
        want = hmac.new(s.key, "\n".join(items).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want.encode(), signature.encode()):
            raise S3Error(
                "SignatureDoesNotMatch", "an aws-chunked chunk's signature does not match"
            )
        self._previous = signature
