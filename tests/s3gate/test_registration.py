"""Unit tests of the gateway's registration pieces: where it says its /metrics is, and how
a node reads a gateway record and a gateway's /metrics (both untrusted)."""

from __future__ import annotations

import pytest
from aiohttp import web

from clientlib.errors import BadRequest, ConfigError
from clientlib.gateways import (
    GatewayInfo,
    _figures,
    gateway_figures,
    gateway_key,
    gateway_records,
)
from s3gate.config import _metrics_advertise


def test_the_advertised_metrics_address():
    assert _metrics_advertise(("127.0.0.1", 9465), None) == "127.0.0.1:9465"
    assert _metrics_advertise(("0.0.0.0", 9465), None) is None  # unreachable as given
    assert _metrics_advertise(("::", 9465), ("fd00::7", 9465)) == "[fd00::7]:9465"
    assert _metrics_advertise(None, None) is None
    with pytest.raises(ConfigError, match="needs --metrics-listen"):
        _metrics_advertise(None, ("10.0.0.1", 9465))


class _Entry:
    def __init__(self, key: bytes, value: bytes) -> None:
        self.key, self.value = key, value


def test_gateway_records_are_plain_ids_and_host_ports_under_their_own_key():
    good = GatewayInfo("gw-9000", "10.0.0.1:9465", 1.0)
    entries = [
        _Entry(gateway_key("c", "gw-9000"), good.to_json()),
        _Entry(gateway_key("c", "x"), GatewayInfo("x", "10.0.0.1:9465/evil?").to_json()),
        _Entry(gateway_key("c", "y"), GatewayInfo("other", "10.0.0.2:9465").to_json()),
        _Entry(gateway_key("c", "z"), b"not json"),
        _Entry(b"/ringcache/c/nodes/gw-9000", good.to_json()),
    ]
    assert gateway_records("c", entries) == [good]
    with pytest.raises(BadRequest):
        GatewayInfo.from_json(GatewayInfo("<b>", "10.0.0.1:1").to_json())


def test_only_numbers_of_the_gateway_metrics_are_kept():
    text = (
        "# TYPE ringcache_gateway_requests_total counter\n"
        'ringcache_gateway_requests_total{op="GetObject",code="200"} 7\n'
        'ringcache_gateway_requests_total{op="GetObject",code="404"} 2\n'
        'ringcache_gateway_requests_total{op="<img src=x>",code="503"} 1\n'
        "# TYPE ringcache_gateway_bytes_total counter\n"
        'ringcache_gateway_bytes_total{direction="out"} 4096\n'
        "# TYPE ringcache_client_block_reads_total counter\n"
        'ringcache_client_block_reads_total{source="peer"} 3\n'
        'ringcache_client_block_reads_total{source="elsewhere"} 5\n'
    )
    assert _figures(text) == {
        "requests": {"GetObject": 9},
        "errors": 3,
        "bytes_out": 4096,
        "bytes_in": 0,
        "blocks": {"local": 0, "peer": 3, "origin": 0},
    }


async def test_a_hostile_metrics_answer_is_unreachable_and_never_echoed():
    good = (
        b"# TYPE ringcache_gateway_bytes_total counter\n"
        b'ringcache_gateway_bytes_total{direction="out"} 5\n'
    )
    answers = iter([good.replace(b" 5", b" +Inf"), b"<b>" * (1 << 19), b"<script>{{{ 1\n", good])

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=next(answers))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    gateway = GatewayInfo("gw", f"{host}:{port}")
    try:
        rows = [(await gateway_figures([gateway]))[0] for _ in range(4)]
    finally:
        await runner.cleanup()
    assert [(r["state"], r.get("reason")) for r in rows[:3]] == [
        ("unreachable", "malformed /metrics"),
        ("unreachable", "/metrics larger than 1 MiB"),
        ("unreachable", "malformed /metrics"),
    ]
    assert rows[3]["state"] == "up" and rows[3]["bytes_out"] == 5
