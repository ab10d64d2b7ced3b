#!/usr/bin/env python3
"""An S3 cost model in front of moto_server, for benchmarks: S3's timing, moto's answers.

moto_server is a faithful S3 *API* but not a faithful S3 *cost*: it serves a ranged GET
of a large object by copying the whole object first (4 MiB ranges of a 256 MiB object
come at ~17 MB/s), and it answers in microseconds, where S3 takes tens of milliseconds
to the first byte and gives one connection 85-90 MB/s (AWS's performance design
patterns: "make one concurrent request for each 85-90 MB/s of desired throughput").
Benchmarks of caches over moto therefore measure moto. This proxy makes the costs S3's:

- GETs of objects (whole or one byte range) are answered from a copy of the object in
  memory, fetched from moto once with one whole-object GET per ETag and kept until any
  write passes through; ``If-Match`` / ``If-None-Match`` that do not match the copy, and
  anything else, go to moto unchanged (so its errors and semantics stay moto's);
- every answer waits ``--ttfb-ms`` before its first byte;
- every response body is paced to ``--mbps-per-conn`` MB/s (per response, so N
  parallel requests get N times the bandwidth, as on S3).

Every reader under test (mountd's cache nodes, rclone, s3fs) goes through the same proxy.

    python -m loadtest.s3model --upstream http://127.0.0.1:5000 --port 5001 \
        [--ttfb-ms 50] [--mbps-per-conn 90]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re

import boto3
import botocore.exceptions
from aiohttp import ClientSession, web

from testkit import forward

CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
#: Headers of the upstream's whole-object answer that a ranged answer repeats.
_KEEP = ("ETag", "Last-Modified", "Content-Type", "Accept-Ranges", "x-amz-version-id")


class Model:
    def __init__(self, upstream: str, ttfb: float, bytes_per_s: float) -> None:
        self.upstream = upstream
        self.ttfb = ttfb
        self.bytes_per_s = bytes_per_s
        self.objects: dict[str, tuple[dict[str, str], bytes]] = {}
        self.loading: dict[str, asyncio.Lock] = {}
        self.session: ClientSession | None = None
        # Signed (moto refuses anonymous GETs); moto takes any key.
        self.s3 = boto3.client(
            "s3",
            endpoint_url=upstream,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.ttfb)
        if request.method not in ("GET", "HEAD"):
            self.objects.clear()  # a write: every copy may be stale
        elif request.method == "GET" and not request.query_string and request.path.count("/") >= 2:
            cached = await self.object(request.path)
            if cached is not None and self.conditions_hold(request, cached[0]):
                return await self.send(request, *cached)
        return await self.forward(request)

    async def object(self, path: str) -> tuple[dict[str, str], bytes] | None:
        """The object at ``path`` from memory, fetched from moto on first use."""
        if path in self.objects:
            return self.objects[path]
        async with self.loading.setdefault(path, asyncio.Lock()):
            if path not in self.objects:
                bucket, _, key = path.lstrip("/").partition("/")
                if not key or bucket == "moto-api":
                    return None
                try:
                    got = await asyncio.to_thread(self.s3.get_object, Bucket=bucket, Key=key)
                    body = await asyncio.to_thread(got["Body"].read)
                except (botocore.exceptions.ClientError, botocore.exceptions.ParamValidationError):
                    return None  # moto's own answer, through forward()
                meta = got["ResponseMetadata"]["HTTPHeaders"]
                headers = {k: meta[k.lower()] for k in _KEEP if k.lower() in meta}
                self.objects[path] = (headers, body)
        return self.objects.get(path)

    @staticmethod
    def conditions_hold(request: web.Request, headers: dict[str, str]) -> bool:
        etag = headers.get("ETag", "").strip('"')
        if_match = request.headers.get("If-Match")
        if if_match is not None and if_match.strip().strip('"') not in (etag, "*"):
            return False  # moto answers 412 (S3 takes the tag with or without quotes)
        return request.headers.get("If-None-Match") is None and (
            "If-Modified-Since" not in request.headers
            and "If-Unmodified-Since" not in request.headers
        )

    async def send(
        self, request: web.Request, headers: dict[str, str], body: bytes
    ) -> web.StreamResponse:
        start, end, status = 0, len(body) - 1, 200
        if (raw := request.headers.get("Range")) is not None:
            match = _RANGE.fullmatch(raw.strip())
            if match is None or int(match[1]) >= len(body):
                return await self.forward(request)  # moto's answer to an odd range
            start = int(match[1])
            end = min(int(match[2]), len(body) - 1) if match[2] else len(body) - 1
            status = 206
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start + 1
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        began = loop.time()
        view = memoryview(body)
        for offset in range(start, end + 1, CHUNK):
            await response.write(view[offset : min(offset + CHUNK, end + 1)])
            ahead = began + (offset + CHUNK - start) / self.bytes_per_s - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await response.write_eof()
        return response

    async def forward(self, request: web.Request) -> web.Response:
        assert self.session is not None
        return await forward(self.session, self.upstream, request)


async def serve(args: argparse.Namespace) -> None:
    model = Model(args.upstream.rstrip("/"), args.ttfb_ms / 1000, args.mbps_per_conn * 1e6)
    model.session = ClientSession(auto_decompress=False)
    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("*", "/{tail:.*}", model.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"s3model on 127.0.0.1:{args.port} -> {args.upstream}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="moto_server URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttfb-ms", type=float, default=50.0)
    parser.add_argument("--mbps-per-conn", type=float, default=90.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
