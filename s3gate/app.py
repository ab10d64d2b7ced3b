"""The gateway's aiohttp application: S3 requests to handlers, signatures, errors, metrics.

Path-style addressing (``/bucket/key``): an S3 operation is named by the method, whether
there is a key, and the query's subresources (``?uploads``, ``?location``...). Every
request is authenticated first (:meth:`Gateway.caller`): SigV4 in the header or the query
checked against the keys file, or anonymous only with ``--allow-anonymous``. Every answer
is counted in ``ringcache_gateway_requests_total{op,code}``; every error is S3's XML.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from clientlib import CacheClient
from clientlib.auth import READ, Claims, Credentials
from clientlib.errors import NotFound, RingcacheError
from clientlib.origin import Origins
from clientlib.urls import split_url
from s3gate.caller import Buckets, Caller, Target
from s3gate.config import GatewayConfig
from s3gate.errors import S3Error, as_s3_error, xml_error
from s3gate.keys import ANONYMOUS
from s3gate.listing import NS, list_buckets, list_objects, xml_answer
from s3gate.metrics import GATEWAY_REQUESTS, GATEWAY_SECONDS
from s3gate.objects import send_object
from s3gate.sigv4 import query_params, verify
from s3gate.uploads import Uploads
from s3gate.writes import delete_object, delete_objects, put_object

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

ANONYMOUS_CLAIMS = Claims(("",), ANONYMOUS, 0.0, frozenset({READ}))
#: Subresources of a bucket or object the gateway does not serve (ACLs, policies...).
_UNSERVED = frozenset(
    {"acl", "policy", "cors", "lifecycle", "tagging", "versioning", "versions", "website",
     "logging", "notification", "replication", "encryption", "object-lock", "retention",
     "legal-hold", "torrent", "restore", "select", "attributes", "accelerate",
     "requestPayment", "analytics", "inventory", "metrics", "ownershipControls",
     "publicAccessBlock", "intelligent-tiering"}
)  # fmt: skip


class Gateway:
    """The S3 API over one cluster: a :class:`CacheClient` per token, one origin pool."""

    def __init__(self, config: GatewayConfig, spool: Path) -> None:
        self.config = config
        self.buckets = Buckets(config.buckets)
        roots = [Path(split_url(url)[1]) for url in config.buckets.values()]
        self.origins = Origins(roots, max_inflight=32)
        self.uploads = Uploads(spool)
        self.spool = spool
        self._clients: dict[int, CacheClient] = {}

    def _client(self, credentials: Credentials) -> CacheClient:
        client = self._clients.get(id(credentials))
        if client is None:
            config = self.config
            client = CacheClient(
                config.etcd,
                config.cluster,
                # Blocks stream through: the cluster is the cache, not this process.
                memory_cache_bytes=0,
                peer_read_timeout=config.peer_timeout,
                peer_timeout=2 * config.peer_timeout,
                origins=self.origins,
                credentials=credentials,
                ca_file=str(config.ca) if config.ca else None,
            )
            self._clients[id(credentials)] = client
        return client

    async def start(self) -> None:
        """Start one client per distinct token (keys, and the gateway's own)."""
        for credentials in {id(c): c for c in self._credentials()}.values():
            await self._client(credentials).start()
        await self.origins.prepare_s3()

    def _credentials(self) -> list[Credentials]:
        return [self.config.credentials, *(k.credentials for k in self.config.keys.values())]

    async def close(self) -> None:
        self.uploads.close()
        for client in self._clients.values():
            await client.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._answer])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def caller(self, request: web.Request, raw_path: str, raw_query: str) -> Caller:
        """Who signed ``request`` (checked), or the anonymous caller if that is allowed."""
        query = query_params(raw_query)
        if not {"X-Amz-Algorithm", "AWSAccessKeyId"} & query.keys() and (
            "Authorization" not in request.headers
        ):
            if not self.config.allow_anonymous:
                raise S3Error("AccessDenied", "anonymous requests are not allowed")
            credentials = self.config.credentials
            # Without a token of their own, anonymous callers read (never write) what the
            # gateway reads: an open cluster must not become an open origin for writes.
            claims = credentials.claims if credentials.signing else ANONYMOUS_CLAIMS
            return Caller(ANONYMOUS, claims, self._client(credentials), None)

        def secret_of(access_key: str) -> str | None:
            key = self.config.keys.get(access_key)
            return None if key is None else key.secret_key

        signed = verify(request.method, raw_path, raw_query, request.headers, secret_of)
        key = self.config.keys[signed.access_key]
        return Caller(key.access_key, key.credentials.claims, self._client(key.credentials), signed)

    @web.middleware
    async def _answer(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """Errors as S3's XML, and the request counted and timed under its operation."""
        started = time.monotonic()
        request["op"] = "Unknown"
        try:
            response = await handler(request)
        except web.HTTPNotModified as exc:
            response = exc
        except RingcacheError as exc:
            error = as_s3_error(exc)
            request_id = uuid.uuid4().hex[:16].upper()
            log_at = logging.WARNING if error.http_status >= 500 else logging.INFO
            log.log(log_at, "%s %s: %s %s", request.method, request.path[:200], error.code, exc)
            body = b"" if request.method == "HEAD" else xml_error(error, request.path, request_id)
            response = web.Response(
                status=error.http_status,
                body=body,
                content_type="application/xml",
                headers={"x-amz-request-id": request_id},
            )
        op = request["op"]
        GATEWAY_REQUESTS.labels(op, str(response.status)).inc()
        GATEWAY_SECONDS.labels(op).observe(time.monotonic() - started)
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, then dispatch by method, bucket, key and subresource."""
        raw_path, _, raw_query = request.raw_path.partition("?")
        caller = self.caller(request, raw_path, raw_query)
        query = query_params(raw_query)
        bucket, _, key = unquote(raw_path)[1:].partition("/")
        method = request.method
        if not bucket:
            request["op"] = "ListBuckets"
            if method != "GET":
                raise S3Error("MethodNotAllowed", "only GET is allowed on /")
            return self._list_buckets(caller)
        unserved = _UNSERVED & query.keys()
        if unserved:
            raise S3Error("NotImplemented", f"the gateway does not serve ?{min(unserved)}")
        target = self.buckets.target(bucket, key)
        if key:
            return await self._object(request, caller, target, method, query)
        return await self._bucket(request, caller, target, method, query)

    def _list_buckets(self, caller: Caller) -> web.Response:
        names = set()
        for scope in caller.claims.scope:
            if scope.startswith("s3://"):
                names.add(scope[5:].partition("/")[0])
        names |= {n for n, url in self.buckets.local.items() if caller.may_see(url + "/")}
        return list_buckets(names, caller.name)

    async def _bucket(
        self,
        request: web.Request,
        caller: Caller,
        target: Target,
        method: str,
        query: dict[str, str],
    ) -> web.StreamResponse:
        origin = await self.origins.get(target.url)
        if method == "GET" and "location" in query:
            request["op"] = "GetBucketLocation"
            if not caller.may_see(target.url):
                raise S3Error("AccessDenied", f"{caller.name} may not see {target.bucket}")
            region = "" if self.config.region == "us-east-1" else self.config.region
            return xml_answer(f'<LocationConstraint xmlns="{NS}">{region}</LocationConstraint>')
        if method == "GET" and "uploads" not in query:
            v2 = query.get("list-type") == "2"
            request["op"] = "ListObjectsV2" if v2 else "ListObjects"
            prefixed = self.buckets.target(target.bucket, query.get("prefix", ""))
            try:
                return await list_objects(origin, prefixed, caller, query, v2)
            except NotFound:
                raise S3Error("NoSuchBucket", "the specified bucket does not exist") from None
        if method == "HEAD":
            request["op"] = "HeadBucket"
            if not caller.may_see(target.url):
                raise S3Error("AccessDenied", f"{caller.name} may not see {target.bucket}")
            try:
                await origin.listdir(target.url, max_keys=1)
            except NotFound:
                raise S3Error("NoSuchBucket", "the specified bucket does not exist") from None
            return web.Response()
        if method == "POST" and "delete" in query:
            request["op"] = "DeleteObjects"
            return await delete_objects(request, caller, origin, self.buckets, target.bucket)
        request["op"] = f"Bucket{method.title()}"
        raise S3Error("NotImplemented", f"{method} of a bucket is not served by the gateway")

    async def _object(
        self,
        request: web.Request,
        caller: Caller,
        target: Target,
        method: str,
        query: dict[str, str],
    ) -> web.StreamResponse:
        origin = await self.origins.get(target.url)
        upload_id = query.get("uploadId")
        if method in ("GET", "HEAD") and upload_id is None and "uploads" not in query:
            request["op"] = "GetObject" if method == "GET" else "HeadObject"
            caller.require(target, READ)
            info = await caller.client.stat(target.url)
            return await send_object(request, caller.client, info, self.config.read_ahead)
        if method == "PUT" and upload_id is not None:
            request["op"] = "UploadPart"
            if "X-Amz-Copy-Source" in request.headers:
                raise S3Error("NotImplemented", "UploadPartCopy is not served by the gateway")
            number = query.get("partNumber", "")
            return await self.uploads.put_part(request, caller, target, upload_id, number)
        if method == "PUT":
            request["op"] = "PutObject"
            if "X-Amz-Copy-Source" in request.headers:
                raise S3Error("NotImplemented", "CopyObject is not served by the gateway")
            return await put_object(request, caller, origin, target, self.spool)
        if method == "POST" and "uploads" in query:
            request["op"] = "CreateMultipartUpload"
            return await self.uploads.create(request, caller, target)
        if method == "POST" and upload_id is not None:
            request["op"] = "CompleteMultipartUpload"
            return await self.uploads.complete(request, caller, origin, target, upload_id)
        if method == "DELETE" and upload_id is not None:
            request["op"] = "AbortMultipartUpload"
            return await self.uploads.abort(caller, target, upload_id)
        if method == "DELETE":
            request["op"] = "DeleteObject"
            return await delete_object(caller, origin, target)
        raise S3Error("NotImplemented", f"{method} of this kind is not served by the gateway")
