"""The built-in web dashboard (``/dashboard``) in a real headless Chromium.

A two-node cluster gets a known pattern of hits and misses; Chromium loads the page from
one node, lets it poll ``/v1/cluster`` for a few (virtual) seconds, and the rendered DOM
must show the cluster's hit ratios and every node's figures as the nodes' own /metrics
report them. A node record with HTML in its id must show up as text, never as markup.
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
import subprocess
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.cluster import NodeInfo, node_key
from clientlib.etcd import connect
from tests.conftest import node_metric

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


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
async def test_dashboard_shows_the_clusters_figures_in_a_real_browser(
    make_cluster, client_for, s3, bucket, tmp_path
):
    cluster = make_cluster(2)
    big, small = os.urandom(2 * BS + 5), os.urandom(1000)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    for _ in range(2):  # 3 misses, then 3 hits
        # One owner per block: no hedged second request, so every count is exact.
        client = await client_for(cluster, owners_to_try=1)
        assert await client.read(f"s3://{bucket}/big") == big
    assert await client.read(f"s3://{bucket}/small") == small  # 1 miss
    # By count 3 of 7 requests hit; by bytes about half of them did.
    hits = cluster.metric("ringcache_block_hits_total")
    misses = cluster.metric("ringcache_block_misses_total")
    hit_bytes = cluster.metric("ringcache_served_bytes_total", 'result="hit"')
    miss_bytes = cluster.metric("ringcache_served_bytes_total", 'result="miss"')
    assert (hits, misses) == (3, 4)
    assert (hit_bytes, miss_bytes) == (len(big), len(big) + len(small))

    # A node record whose id is HTML (etcd is not trusted to hold clean ids): clients and
    # nodes refuse such a record (clientlib.cluster.NodeInfo.from_json), so it is not
    # listed, and nothing in it reaches the page.
    evil = NodeInfo(EVIL_ID, "127.0.0.1:1", 1.0, 1 << 30, "draining")
    async with connect(cluster.etcd.url) as etcd:
        await etcd.put(node_key(cluster.name, EVIL_ID), evil.to_json())

    ids = {}
    for node in cluster.nodes:
        with urllib.request.urlopen(node.url + "/v1/stats", timeout=5) as resp:
            ids[json.load(resp)["id"]] = node

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
    assert dom.by_id("hit-ratio").text == pct(hits, hits + misses) == "42.9%"
    assert float(dom.by_id("hit-ratio").attrs["data-value"]) == pytest.approx(3 / 7)
    assert dom.by_id("byte-hit-ratio").text == pct(hit_bytes, hit_bytes + miss_bytes)
    used = sum(node_metric(n, "ringcache_cache_used_bytes") for n in cluster.nodes)
    assert used == len(big) + len(small)
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

    # Nothing of the hostile record became an element.
    assert not [e for e in dom.iter() if e.tag == "img"]
    titles = [e.text for e in dom.iter() if e.tag == "title"]
    assert titles == [f"ringcache · {cluster.name}"]
    async with connect(cluster.etcd.url) as etcd:
        await etcd.delete(node_key(cluster.name, EVIL_ID))

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

    readers = [asyncio.create_task(hits()), asyncio.create_task(misses())]
    try:
        for _ in range(3):  # the page's polls are a fraction of a second apart in real time
            live = await asyncio.to_thread(render, url, tmp_path / "live")
            rates = {c: live.by_id(c).text for c in ("req-rate", "served-rate", "origin-rate")}
            if all(leading_number(text) > 0 for text in rates.values()):
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
