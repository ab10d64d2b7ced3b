"""An S3 endpoint with a cloud's faults: a reverse proxy in front of a loopback S3 (moto)
that delays answers, throttles GETs and fails writes with ``503 SlowDown``."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, web

from clientlib.launcher import free_port

__all__ = ["SLOW_DOWN", "S3Proxy", "forward"]


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


async def forward(session: ClientSession, upstream: str, request: web.Request) -> web.Response:
    """``request`` as ``upstream`` answers it (test and benchmark proxies in front of S3)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    async with session.request(
        request.method, upstream + request.path_qs, headers=headers, data=await request.read()
    ) as answer:
        body = await answer.read()
        skip = ("transfer-encoding", "connection")
        if request.method != "HEAD":  # aiohttp sets the length of a body it sends
            skip += ("content-length",)
        out = {k: v for k, v in answer.headers.items() if k.lower() not in skip}
        return web.Response(status=answer.status, body=body, headers=out)


class S3Proxy:
    """A reverse proxy in front of an S3 endpoint that delays or throttles requests.

    Cloud object storage has tens of milliseconds to the first byte and throttles bursts
    with ``503 SlowDown``; a loopback S3 (moto) has neither. Nodes pointed at this proxy
    (``AWS_ENDPOINT_URL``) see ``delay`` seconds before every answer, and the first
    ``fail_gets`` GETs (every GET if negative) answered with 503 SlowDown; likewise the
    first ``fail_writes`` PUTs and POSTs (uploads, multipart parts, their creation and
    completion, copies). The attributes may be changed while it runs (a fault that
    heals); ``failures`` and ``write_failures`` count the 503s sent. ``gets`` counts the
    GETs received, ``gets_in_flight`` those not yet answered and ``max_gets_in_flight``
    the most at once: how many origin requests its clients had open together;
    ``writes_in_flight`` the PUTs and POSTs not yet answered.
    """

    def __init__(
        self, upstream: str, delay: float = 0.0, fail_gets: int = 0, fail_writes: int = 0
    ) -> None:
        self.upstream = upstream
        self.delay = delay
        self.fail_gets = fail_gets
        self.fail_writes = fail_writes
        self.failures = 0
        self.write_failures = 0
        self.gets = 0
        self.gets_in_flight = 0
        self.max_gets_in_flight = 0
        self.writes_in_flight = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> str:
        """Serve on a free loopback port; returns the endpoint URL."""
        session = ClientSession(auto_decompress=False)
        self._session = session

        async def handle(request: web.Request) -> web.Response:
            if request.method in ("PUT", "POST"):
                self.writes_in_flight += 1
                try:
                    return await answer(request)
                finally:
                    self.writes_in_flight -= 1
            if request.method != "GET":
                return await answer(request)
            self.gets += 1
            self.gets_in_flight += 1
            self.max_gets_in_flight = max(self.max_gets_in_flight, self.gets_in_flight)
            try:
                return await answer(request)
            finally:
                self.gets_in_flight -= 1

        async def answer(request: web.Request) -> web.Response:
            await asyncio.sleep(self.delay)
            if request.method == "GET" and (self.fail_gets < 0 or self.failures < self.fail_gets):
                self.failures += 1
                return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
            if request.method in ("PUT", "POST") and (
                self.fail_writes < 0 or self.write_failures < self.fail_writes
            ):
                self.write_failures += 1
                await request.read()  # the client sent its body; it gets an answer
                return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
            return await forward(session, self.upstream, request)

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving and close the upstream session."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
