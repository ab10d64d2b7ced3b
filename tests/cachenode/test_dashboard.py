"""The built-in web dashboard (``/dashboard``) in a real headless Chromium.

A two-node cluster gets a known pattern of hits and misses; Chromium loads the page from
one node, lets it poll ``/v1/cluster`` for a few (virtual) seconds, and the rendered DOM
must show the cluster's hit ratios and every node's figures as the nodes' own /metrics
report them, and a row for a real S3 gateway registered in etcd with its /metrics figures
(a gateway record is on no ring). A node or gateway record with HTML in its id must show
up as text, never as markup.
With ``RINGCACHE_SAVE_SCREENSHOT=1`` the screenshot replaces loadtest/results/dashboard.png
(the one the docs show); otherwise a test run leaves the repository as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.cluster import NodeInfo, node_key
from clientlib.etcd import connect
from clientlib.gateways import GatewayInfo, gateway_key
from clientlib.launcher import Gateway, local_get, start_gateway
from testkit import metric_sum
from tests.conftest import Cluster, node_metric

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "loadtest" / "results" / "dashboard.png"
EVIL_ID = "<img src=x onerror=\"document.title='pwned'\">&amp;"

pytestmark = pytest.mark.timeout(120)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self):  # type: ignore[no-untyped-def]
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def by_id(self, element_id: str) -> Element:
        found = [e for e in self.iter() if e.attrs.get("id") == element_id]
        assert len(found) == 1, f"{len(found)} elements with id {element_id!r}"
        return found[0]


class DomParser(HTMLParser):
    """Chromium's serialised DOM as a tree of :class:`Element` (enough for these checks)."""

    VOID = frozenset(
        ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"]
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    tmp.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def render(url: str, tmp: Path) -> Element:
    parser = DomParser()
    parser.feed(chromium(url, tmp, "--dump-dom").stdout)
    return parser.root


def leading_number(text: str) -> float:
    """``12.3`` of ``"12.3 MiB/s"``, ``1234`` of ``"1,234/s"``, 0 for ``"—"``."""
    match = re.match(r"[\d,]*\.?\d+", text)
    return float(match.group().replace(",", "")) if match else 0.0


def pct(num: float, den: float) -> str:
    return f"{100 * num / den:.1f}%"


def figures(cluster: Cluster) -> tuple[float, float, float, float]:
    """The cluster's block hits, misses, and bytes served as hits and as misses."""
    return (
        cluster.metric("ringcache_block_hits_total"),
        cluster.metric("ringcache_block_misses_total"),
        cluster.metric("ringcache_served_bytes_total", 'result="hit"'),
        cluster.metric("ringcache_served_bytes_total", 'result="miss"'),
    )


async def settled(cluster: Cluster) -> tuple[float, float, float, float]:
    """:func:`figures` once two reads half a second apart agree (a hedged miss still
    sending its bytes counts them when it ends)."""
    previous = figures(cluster)
    for _ in range(40):
        await asyncio.sleep(0.5)
        now = figures(cluster)
        if now == previous:
            return now
        previous = now
    raise AssertionError(f"the cluster's figures never settled: {previous}")


def check_gateway_row(dom: Element, gateway_id: str, gateway: Gateway) -> None:
    """The gateway's row holds the counters its own /metrics reports, and no other row is
    there (the hostile record is skipped)."""
    rows = [tr for tr in dom.by_id("gateways").iter() if "data-gateway" in tr.attrs]
    assert [tr.attrs["data-gateway"] for tr in rows] == [gateway_id]
    text = local_get(gateway.metrics_url).decode()
    values = {k: v for c in rows[0].iter() for k, v in c.attrs.items() if k.startswith("data-")}
    assert int(values["data-requests"]) == metric_sum(text, "ringcache_gateway_requests_total")
    assert int(values["data-op-getobject"]) == metric_sum(
        text, "ringcache_gateway_requests_total", 'op="GetObject"'
    )
    # Every 4xx and 5xx answer: here the one GET of a missing key.
    errors = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ringcache_gateway_requests_total" and sample.labels["code"][0] in "45"
    )
    assert int(values["data-errors"]) == errors == 1
    assert metric_sum(text, "ringcache_gateway_requests_total", 'code="404"') == 1
    out = metric_sum(text, "ringcache_gateway_bytes_total", 'direction="out"')
    assert int(values["data-bytes-out"]) == out > 0
    via_nodes = metric_sum(text, "ringcache_client_block_reads_total", 'source="peer"')
    assert int(values["data-blocks-via-nodes"]) == via_nodes > 0
    cells = [c for c in rows[0].children if isinstance(c, Element) and c.tag == "td"]
    assert cells[0].text == gateway_id + gateway.metrics_url.split("/")[2]
    assert cells[1].text == "up"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
async def test_dashboard_shows_the_clusters_figures_in_a_real_browser(
    make_cluster, client_for, s3, bucket, tmp_path, request
):
    cluster = make_cluster(2)
    big, small = os.urandom(2 * BS + 5), os.urandom(1000)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    for _ in range(2):  # 3 misses, then 3 hits
        # One owner per block and no origin read within a minute: no hedged second
        # request, so every count is exact.
        client = await client_for(cluster, owners_to_try=1, hedge_delay=60)
        assert await client.read(f"s3://{bucket}/big") == big
    assert await client.read(f"s3://{bucket}/small") == small  # 1 miss
    # By count 3 of 7 requests hit; by bytes half of the big file's did.
    assert figures(cluster) == (3, 4, len(big), len(big) + len(small))
    assert sum(node_metric(n, "ringcache_cache_used_bytes") for n in cluster.nodes) == (
        len(big) + len(small)
    )
    # A real gateway (it registers its --metrics-listen under gateways/<id>): a GET
    # through it (a hit on a node), and a GET of a missing key (an error). Unsigned
    # requests (--allow-anonymous), sent from this event loop: no client threads.
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\naccess_key = "dash"\nsecret_key = "dash-secret-key-0123"\n')
    gateway = start_gateway(
        cluster.etcd.url, cluster.name, keys, "--allow-anonymous", log_path=tmp_path / "s3gate.log"
    )
    gateway_id = f"{socket.gethostname().split('.')[0]}-{gateway.endpoint.rsplit(':', 1)[1]}"
    request.addfinalizer(gateway.stop)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.endpoint}/{bucket}/small") as resp:
            assert (resp.status, await resp.read()) == (200, small)
        async with http.get(f"{gateway.endpoint}/{bucket}/missing") as resp:
            assert resp.status == 404 and b"NoSuchKey" in await resp.read()
    # Mostly one more hit (4 of 8). The gateway's client hedges as every client does: on
    # a loaded machine its GET may also go to the other node (a miss there), so the page
    # is checked against the figures the nodes report once they stop changing.
    hits, misses, hit_bytes, miss_bytes = await settled(cluster)
    assert hits >= 3 and misses >= 4 and hit_bytes >= len(big) and miss_bytes >= len(big)

    # A node record whose id is HTML (etcd is not trusted to hold clean ids): clients and
    # nodes refuse such a record (clientlib.cluster.NodeInfo.from_json), so it is not
    # listed, and nothing in it reaches the page.
    evil = NodeInfo(EVIL_ID, "127.0.0.1:1", 1.0, 1 << 30, "draining")
    async with connect(cluster.etcd.url) as etcd:
        await etcd.put(node_key(cluster.name, EVIL_ID), evil.to_json())
        # The same for a gateway record, whose address is also not a plain host:port.
        evil_gateway = GatewayInfo(EVIL_ID, "127.0.0.1:1/x?", 1.0)
        await etcd.put(gateway_key(cluster.name, EVIL_ID), evil_gateway.to_json())

    ids = {}
    for node in cluster.nodes:
        with urllib.request.urlopen(node.url + "/v1/stats", timeout=5) as resp:
            ids[json.load(resp)["id"]] = node

    # The gateway's record puts it on no ring: a client that starts now sees the nodes only.
    fresh_client = await client_for(cluster)
    assert {name for _, name in fresh_client.ring.points()} == set(ids)

    url = f"{cluster.nodes[0].url}/dashboard"
    # The page runs under a CSP that allows only its own inline code (checked by hash):
    # it rendering live below shows the hashes are right.
    with urllib.request.urlopen(url, timeout=5) as resp:
        csp = resp.headers["Content-Security-Policy"]
        html = resp.read().decode()
    assert "http://" not in html and "https://" not in html  # no CDN, nothing external
    assert "script-src 'sha256-" in csp and "unsafe" not in csp
    assert "connect-src 'self'" in csp
    dom = await asyncio.to_thread(render, url, tmp_path / "dom")

    assert "live" in dom.by_id("status").attrs["class"], dom.by_id("status").text
    assert dom.by_id("cluster").text == cluster.name
    assert dom.by_id("hit-ratio").text == pct(hits, hits + misses)
    assert float(dom.by_id("hit-ratio").attrs["data-value"]) == pytest.approx(
        hits / (hits + misses)
    )
    assert dom.by_id("byte-hit-ratio").text == pct(hit_bytes, hit_bytes + miss_bytes)
    used = sum(node_metric(n, "ringcache_cache_used_bytes") for n in cluster.nodes)
    assert int(dom.by_id("used").attrs["data-value"]) == used
    assert dom.by_id("used").text == "8.00 MiB"

    rows = {
        tr.attrs["data-node"]: tr for tr in dom.by_id("nodes").iter() if "data-node" in tr.attrs
    }
    assert set(rows) == set(ids)
    for node_id, node in ids.items():
        row = rows[node_id]
        cells = [c for c in row.children if isinstance(c, Element) and c.tag == "td"]
        assert cells[0].text.startswith(node_id)
        assert node.addr in cells[0].text
        assert cells[1].text == "active"
        values = {k: int(v) for c in cells for k, v in c.attrs.items() if k.startswith("data-")}
        assert values["data-used-bytes"] == node_metric(node, "ringcache_cache_used_bytes")
        assert values["data-capacity-bytes"] == node_metric(node, "ringcache_cache_capacity_bytes")
        assert values["data-hits"] == node_metric(node, "ringcache_block_hits_total")
        assert values["data-misses"] == node_metric(node, "ringcache_block_misses_total")
        assert values["data-hit-bytes"] == node_metric(
            node, "ringcache_served_bytes_total", 'result="hit"'
        )
        node_hits, node_misses = values["data-hits"], values["data-misses"]
        if node_hits + node_misses:
            assert cells[4].text == pct(node_hits, node_hits + node_misses)

    check_gateway_row(dom, gateway_id, gateway)

    # Nothing of the hostile records became an element.
    assert not [e for e in dom.iter() if e.tag == "img"]
    titles = [e.text for e in dom.iter() if e.tag == "title"]
    assert titles == [f"ringcache · {cluster.name}"]
    async with connect(cluster.etcd.url) as etcd:
        await etcd.delete(node_key(cluster.name, EVIL_ID))
        await etcd.delete(gateway_key(cluster.name, EVIL_ID))

    # Live figures: with reads going on, the rates (deltas between polls) are not zero.
    # One reader hits the same blocks again and again, another reads new objects (misses,
    # read through from the origin).
    fresh = [f"new{i}" for i in range(40)]
    for key in fresh:
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(BS // 4))
    stop = asyncio.Event()

    async def hits() -> None:
        while not stop.is_set():
            client.clear_local()
            await client.read(f"s3://{bucket}/big")

    async def misses() -> None:
        for key in itertools.cycle(fresh):  # after the first round, hits too
            if stop.is_set():
                return
            await client.read(f"s3://{bucket}/{key}")

    async def through_gateway() -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                async with http.get(f"{gateway.endpoint}/{bucket}/big") as resp:
                    assert await resp.read() == big

    readers = [
        asyncio.create_task(hits()),
        asyncio.create_task(misses()),
        asyncio.create_task(through_gateway()),
    ]
    try:
        for _ in range(3):  # the page's polls are a fraction of a second apart in real time
            live = await asyncio.to_thread(render, url, tmp_path / "live")
            rates = {c: live.by_id(c).text for c in ("req-rate", "served-rate", "origin-rate")}
            row = next(tr for tr in live.by_id("gateways").iter() if "data-gateway" in tr.attrs)
            cells = [c.text for c in row.children if isinstance(c, Element) and c.tag == "td"]
            rates.update(gateway_requests=cells[2], gateway_out=cells[5])
            if all(leading_number(text) > 0 for text in rates.values()):
                assert cells[3].startswith("GetObject ")
                break
        else:
            raise AssertionError(f"the page shows no traffic: {rates}")
        shot = tmp_path / "dashboard.png"
        await asyncio.to_thread(
            chromium, url, tmp_path / "shot", f"--screenshot={shot}", "--window-size=1280,800"
        )
    finally:
        stop.set()
        await asyncio.gather(*readers)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert int.from_bytes(png[16:20], "big") == 1280
    if os.environ.get("RINGCACHE_SAVE_SCREENSHOT") == "1":
        shutil.copy(shot, SCREENSHOT)
