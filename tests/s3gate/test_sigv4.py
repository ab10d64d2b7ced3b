"""SigV4 verification (one function each, no servers): requests signed by botocore's own
signer pass, any change to them fails, the time windows hold, and AWS's published
aws-chunked example verifies chunk by chunk."""

from __future__ import annotations

import asyncio
import datetime
from unittest.mock import patch
from urllib.parse import urlsplit

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from s3gate.errors import S3Error
from s3gate.sigv4 import ChunkedDecoder, verify

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = {"AKIAIOSFODNN7EXAMPLE": SECRET}
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def signed(url: str, method: str = "GET", presign: int = 0, headers: dict | None = None):  # type: ignore[no-untyped-def]
    """``(path, query, headers)`` of a request botocore signed at :data:`NOW`."""
    request = AWSRequest(method=method, url=url, headers=headers or {})
    credentials = Credentials("AKIAIOSFODNN7EXAMPLE", SECRET)
    auth = (
        S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=presign)
        if presign
        else S3SigV4Auth(credentials, "s3", "us-east-1")
    )
    with patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth.add_auth(request)
    parts = urlsplit(request.url)
    out = CIMultiDict(request.headers.items())
    out["Host"] = parts.netloc
    return parts.path, parts.query, CIMultiDictProxy(out)


def check(path: str, query: str, headers, method: str = "GET", at: float | None = None):  # type: ignore[no-untyped-def]
    when = NOW.timestamp() if at is None else at
    return verify(method, path, query, headers, KEYS.get, now=when)


def code(exc: pytest.ExceptionInfo[S3Error]) -> str:
    return exc.value.code


def test_header_signatures_from_botocore_verify_and_any_change_fails():
    url = "http://gw:9000/bucket/dir/a%20b+c~.csv?list-type=2&prefix=x%2Fy"
    path, query, headers = signed(url)
    assert check(path, query, headers).access_key == "AKIAIOSFODNN7EXAMPLE"
    with pytest.raises(S3Error) as exc:
        check(path.replace("a%20b", "a%20c"), query, headers)
    assert code(exc) == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as exc:
        check(path, query + "&max-keys=1", headers)
    assert code(exc) == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as exc:
        check(path, query, headers, method="DELETE")
    assert code(exc) == "SignatureDoesNotMatch"
    changed = CIMultiDict(headers)
    changed["X-Amz-Content-SHA256"] = "0" * 64
    with pytest.raises(S3Error) as exc:
        check(path, query, CIMultiDictProxy(changed))
    assert code(exc) == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as exc:
        verify("GET", path, query, headers, lambda key: None, now=NOW.timestamp())
    assert code(exc) == "InvalidAccessKeyId"


def test_header_signatures_hold_for_15_minutes_either_way():
    path, query, headers = signed("http://gw:9000/bucket/key")
    check(path, query, headers, at=NOW.timestamp() + 14 * 60)
    for skew in (-16 * 60, 16 * 60):
        with pytest.raises(S3Error) as exc:
            check(path, query, headers, at=NOW.timestamp() + skew)
        assert code(exc) == "RequestTimeTooSkewed"


def test_presigned_urls_verify_until_they_expire():
    path, query, headers = signed("http://gw:9000/bucket/key", presign=600)
    check(path, query, headers, at=NOW.timestamp() + 599)
    with pytest.raises(S3Error) as exc:
        check(path, query, headers, at=NOW.timestamp() + 601)
    assert code(exc) == "AccessDenied"
    with pytest.raises(S3Error) as exc:
        check(path, query.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"), headers)
    assert code(exc) == "SignatureDoesNotMatch"


def _chunked_example() -> tuple[CIMultiDictProxy[str], bytes]:
    """AWS's example of a signed aws-chunked PUT (S3 API reference, "Signature
    Calculations for the Authorization Header: Transferring Payload in Multiple Chunks")."""
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "Host": "s3.amazonaws.com",
                "x-amz-date": "20130524T000000Z",
                "x-amz-storage-class": "REDUCED_REDUNDANCY",
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
                "us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;"
                "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
                "x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea"
                "153f7db9fa80a0a9",
                "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                "Content-Encoding": "aws-chunked",
                "x-amz-decoded-content-length": "66560",
                "Content-Length": "66824",
            }
        )
    )
    body = (
        b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        b"\r\n" + b"a" * 65536 + b"\r\n"
        b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        b"\r\n" + b"a" * 1024 + b"\r\n"
        b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        b"\r\n\r\n"
    )
    return headers, body


async def _decode(headers: CIMultiDictProxy[str], body: bytes) -> bytes:
    when = datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC).timestamp()
    request = verify("PUT", "/examplebucket/chunkObject.txt", "", headers, KEYS.get, now=when)
    stream = StreamReader(
        BaseProtocol(asyncio.get_running_loop()), 2**22, loop=asyncio.get_running_loop()
    )
    stream.feed_data(body)
    stream.feed_eof()
    return b"".join([chunk async for chunk in ChunkedDecoder(request, stream).chunks()])


async def test_aws_chunked_example_decodes_and_a_changed_chunk_fails():
    headers, body = _chunked_example()
    assert await _decode(headers, body) == b"a" * 66560
    with pytest.raises(S3Error) as exc:
        await _decode(headers, body.replace(b"a" * 1024, b"a" * 1023 + b"b"))
    assert code(exc) == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as exc:  # the last chunk dropped
        await _decode(headers, body[: body.index(b"0;chunk")])
    assert code(exc) == "IncompleteBody"


async def test_aws_chunked_trailer_lines_are_bounded_and_need_a_trailer_payload():
    headers, body = _chunked_example()
    end = body.rindex(b"\r\n")
    with pytest.raises(S3Error) as exc:  # one line, but the request declared no trailer
        await _decode(headers, body[:end] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n")
    assert code(exc) == "InvalidRequest"
    endless = b"".join(b"x-amz-meta-%d:%s\r\n" % (n, b"a" * 1000) for n in range(2000))
    with pytest.raises(S3Error) as exc:  # 2 MB of lines held in memory before
        await _decode(headers, body[:end] + endless + b"\r\n")
    assert code(exc) == "InvalidRequest"
