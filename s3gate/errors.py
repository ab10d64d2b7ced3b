"""S3's errors: a code, a status and the XML body S3 clients parse.

Everything a handler raises leaves the gateway as one of these (:func:`as_s3_error`):
ringcache's own errors map to the S3 code a client knows how to handle (``NoSuchKey``,
``AccessDenied``, ``ServiceUnavailable`` to retry), and the message is one line.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from clientlib.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    OriginError,
    RangeNotSatisfiable,
    RingcacheError,
    Unauthorized,
    VersionMismatch,
)

__all__ = ["S3Error", "as_s3_error", "xml_error"]

#: S3's status for each code the gateway answers with.
STATUS = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "OperationAborted": 409,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "RequestTimeout": 400,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(RingcacheError):
    """An S3 error answer: ``code`` (S3's), its HTTP status and a one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = STATUS[code]


def as_s3_error(exc: RingcacheError) -> S3Error:
    """The S3 error a client gets for one of ringcache's errors."""
    if isinstance(exc, S3Error):
        return exc
    message = str(exc)
    if isinstance(exc, NotFound):
        return S3Error("NoSuchKey", "the specified key does not exist")
    if isinstance(exc, Forbidden | Unauthorized):
        return S3Error("AccessDenied", message)
    if isinstance(exc, RangeNotSatisfiable):
        return S3Error("InvalidRange", message)
    if isinstance(exc, BadRequest):
        return S3Error("InvalidArgument", message)
    if isinstance(exc, VersionMismatch | OriginError):
        return S3Error("ServiceUnavailable", message)
    return S3Error("InternalError", message)


def xml_error(error: S3Error, resource: str, request_id: str) -> bytes:
    """The XML body of ``error`` for the request of ``resource``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{error.code}</Code><Message>{escape(str(error))}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
