"""A block's ranged GetObject without botocore's per-call machinery: a node's warm fetch.

A node fetches a block with one ranged GET of one object version. Through
``client.get_object`` each such GET spends about a millisecond of CPU in botocore before
and after the bytes move: parameter validation, two dozen event hooks, the endpoint rule
set, the retry handler and the parsing of the answer into a dict (a profile of a warmup
put 40% of the nodes' Python time there). :class:`LeanGet` makes that one request with
botocore's own parts and nothing else:

- where the request goes, and the region it is signed for: where the client last sent
  a ``GetObject`` of that bucket and for which region it signed it, learnt from its
  ``before-sign`` event (a hook on the client's own events). The first GET of a bucket
  is therefore ``get_object``'s. So the endpoint (``AWS_ENDPOINT_URL``, FIPS,
  dual-stack...), path-style or virtual-host addressing and the bucket's region (after
  a region redirect too) are the client's own;
- the signature: botocore's :class:`~botocore.auth.S3SigV4Auth`, with the session's
  credentials frozen per request (refreshed as the client's are) and the session token
  signed in;
- the connection: kept-alive ``http.client`` connections of its own, made with the
  transport settings of the client's session (:mod:`clientlib.origin.s3conns`: CA
  bundle, timeouts, pool size); a client or endpoint with a proxy or a client
  certificate is left to ``get_object``.

Whatever answer this path does not take as it is goes to ``get_object``. A 206 is the
block (a 200 too: the caller checks its length and ``Content-Range``); 404 and 412 are
final (:class:`NotFound`, :class:`VersionMismatch`); any other status, a failed
connection or missing credentials is asked again through the client, whose standard
retry mode backs off, follows a region redirect and maps the error exactly as before. A
transient failure (5xx, 429, a connection error) first waits one step of botocore's own
backoff, so a throttled origin is not asked twice at once.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
import botocore.awsrequest
import botocore.exceptions
import botocore.response
import botocore.retries.standard
import botocore.utils

from clientlib.errors import NotFound, VersionMismatch
from clientlib.origin.s3conns import Body, Connection, Connections

__all__ = ["LeanGet"]

log = logging.getLogger(__name__)

#: Answers worth one of botocore's backoff steps before the client asks again.
_TRANSIENT = frozenset({429, 500, 502, 503, 504})


class LeanGet:
    """Ranged GETs of S3 objects signed and sent with botocore's parts (module doc).

    Safe to use from many threads: what a thread learns from the client's
    ``before-sign`` event is its own request's.
    """

    def __init__(self, client: Any, credentials: Any, ca_bundle: str | None = None) -> None:
        self._client = client
        self._credentials = credentials
        self._conns = Connections(client.meta.config, ca_bundle)
        #: bucket -> (URL up to the key, signing region), or None: always ``get_object``.
        self._bases: dict[str, tuple[str, str] | None] = {}
        self._asking = threading.local()  # .what: the (bucket, key) this thread signs
        self._backoff = botocore.retries.standard.ExponentialBackoff()
        client.meta.events.register("before-sign.s3.GetObject", self._learn)

    def _learn(self, request: Any, region_name: str, **kwargs: Any) -> None:
        """Keep where the client sends a GET of the bucket this thread asks for, and the
        region it signs it for (an endpoint rule's or a region redirect's, else the
        client's); a bucket the client signs otherwise (S3 Express) is left to it."""
        what = getattr(self._asking, "what", None)
        if what is None:
            return
        bucket, key = what
        split = urlsplit(request.url)
        quoted = botocore.utils.percent_encode(key, safe="/~")
        signing = request.context.get("signing", {})
        base = None
        if split.path.endswith("/" + quoted) and signing.get("signing_name", "s3") == "s3":
            prefix = f"{split.scheme}://{split.netloc}{split.path[: -len(quoted)]}"
            base = (prefix, signing.get("region") or region_name)
        if "express" in str(kwargs.get("signature_version")):
            base = None
        self._bases[bucket] = base

    @contextlib.contextmanager
    def _asking_for(self, bucket: str, key: str) -> Iterator[None]:
        """Within it, what the client signs is this thread's GET of ``key``."""
        self._asking.what = (bucket, key)
        try:
            yield
        finally:
            self._asking.what = None

    def base(self, bucket: str) -> tuple[str, str] | None:
        """The URL a key of ``bucket`` is appended to, and the region to sign for, as the
        client last sent a GET of it; None before that, or when the bucket is left to
        ``get_object``."""
        return self._bases.get(bucket)

    def get(
        self, bucket: str, key: str, offset: int, length: int, etag: str, lean: bool = True
    ) -> Answer:
        """GET bytes ``[offset, offset+length)`` of ``key`` if its ETag is still ``etag``;
        the answer with its body unread (lean if it could be and ``lean``, else
        ``get_object``'s).

        Raises :class:`NotFound` (404) and :class:`VersionMismatch` (412) from the lean
        request; ``get_object``'s errors are botocore's.
        """
        sent = self._lean(bucket, key, offset, length, etag) if lean else None
        if sent is not None:
            url, conn, resp = sent
            return Answer(
                resp.getheader("Content-Length"),
                resp.getheader("Content-Range", ""),
                Body(conn, resp),
                resp,
                lambda: self._conns.give_back(url, conn),
                conn.sock,
            )
        with self._asking_for(bucket, key):
            got = self._client.get_object(
                Bucket=bucket,
                Key=key,
                Range=f"bytes={offset}-{offset + length - 1}",
                IfMatch=f'"{etag}"',
            )
        body = got["Body"]
        raw = getattr(body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        if type(body) is not botocore.response.StreamingBody:
            fp = None  # wrapped in a checksum check: read through botocore's body
        return Answer(
            got.get("ContentLength"),
            got.get("ContentRange", ""),
            body,
            fp,
            getattr(raw, "release_conn", None),
        )

    def _lean(
        self, bucket: str, key: str, offset: int, length: int, etag: str
    ) -> tuple[str, Connection, http.client.HTTPResponse] | None:
        """The lean GET: its URL, connection and 200 or 206 answer, or None when
        ``get_object`` must make this request."""
        if self._credentials is None:
            return None
        base = self.base(bucket)
        if base is None:
            return None
        prefix, region = base
        url = prefix + botocore.utils.percent_encode(key, safe="/~")
        if not self._conns.usable(url):
            return None
        try:
            request = botocore.awsrequest.AWSRequest(
                "GET",
                url,
                headers={
                    "Range": f"bytes={offset}-{offset + length - 1}",
                    "If-Match": f'"{etag}"',
                },
            )
            frozen = self._credentials.get_frozen_credentials()
            botocore.auth.S3SigV4Auth(frozen, "s3", region).add_auth(request)
            conn, resp = self._conns.get(url, dict(request.headers.items()))
        except (botocore.exceptions.BotoCoreError, OSError, http.client.HTTPException) as exc:
            log.info("GET of s3://%s/%s failed (%s); asking through get_object", bucket, key, exc)
            self._back_off()
            return None
        status = resp.status
        if status in (200, 206):  # the caller checks the length and Content-Range
            return url, conn, resp
        self._conns.finish_error(url, conn, resp)
        if status == 404:
            raise NotFound(f"no such object: s3://{bucket}/{key}")
        if status == 412:
            raise VersionMismatch(f"s3://{bucket}/{key} changed since it was opened")
        log.info("GET of s3://%s/%s answered %d; asking through get_object", bucket, key, status)
        if status in _TRANSIENT:
            self._back_off()
        return None

    def close(self) -> None:
        """Close the idle connections."""
        self._conns.close()

    def _back_off(self) -> None:
        """Wait what botocore's standard retry mode waits before its second attempt."""
        time.sleep(self._backoff.delay_amount(botocore.retries.standard.RetryContext(1)))


@dataclass(frozen=True, slots=True)
class Answer:
    """A GET's answer, its body unread.

    ``fp`` is the ``http.client`` response to read the body from (None when botocore
    wraps it in more), ``release`` what hands the connection back once the body is read
    to its end, ``body`` what to close when it is not, ``sock`` the connection's socket
    when it is this module's (:func:`clientlib.origin.s3recv.receive_into`).
    """

    content_length: str | int | None
    content_range: str
    body: Any
    fp: http.client.HTTPResponse | None
    release: Callable[[], None] | None
    sock: socket.socket | None = None

    @property
    def direct(self) -> bool:
        """Whether the body may be read from ``fp`` itself and its connection handed
        back with ``release``: not wrapped by botocore, and not chunked."""
        return self.fp is not None and not self.fp.chunked and self.release is not None
