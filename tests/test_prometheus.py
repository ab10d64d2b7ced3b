"""config/prometheus.yml against a real Prometheus and a real cluster.

Prometheus (Debian's ``prometheus``) runs the shipped config and recording rules, with only
the discovery URLs and intervals rewritten for the test cluster. It must find both nodes
through their ``/v1/prometheus-sd`` endpoint and compute the hit ratio, by count and by
bytes, of a known pattern of reads: every block missed once and hit once gives 0.5.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from cachenode import metrics as node_metrics
from clientlib import metrics as client_metrics
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import Process, free_port, http_ok, wait_until
from s3gate import metrics as gateway_metrics
from tests.conftest import node_metric

CONFIG = Path(__file__).resolve().parent.parent / "config"
GRAFANA = CONFIG / "grafana" / "ringcache.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB = "ringcache-nodes"

pytestmark = pytest.mark.timeout(60)


class Prometheus:
    def __init__(self, proc: Process, url: str) -> None:
        self.proc = proc
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        qs = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``, or ``None`` while it has no sample."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as r:
            return [t for t in json.load(r)["data"]["activeTargets"] if t["scrapePool"] == JOB]

    async def wait(self, what: str, check: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(check):
            if time.monotonic() > deadline or not self.proc.alive():
                raise AssertionError(f"timed out waiting for {what}\n{self.proc.log_tail()}")
            await asyncio.sleep(0.2)


def prometheus_config(node_urls: list[str], workdir: Path) -> Path:
    """The shipped config, pointed at the test cluster's nodes and sped up to 1 s."""
    doc = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    doc["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    jobs = [job for job in doc["scrape_configs"] if job["job_name"] == JOB]
    assert len(jobs) == 1, f"config/prometheus.yml has no {JOB} job"
    job = jobs[0]
    # One discovery entry per node, as the config recommends; Prometheus must merge them.
    job["http_sd_configs"] = [
        {"url": f"{url}/v1/prometheus-sd", "refresh_interval": "1s"} for url in node_urls
    ]
    doc["scrape_configs"] = [job]  # no mountd in this test
    for rules in doc["rule_files"]:
        shutil.copy(CONFIG / rules, workdir / rules)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Any]:
    procs: list[Process] = []

    def start(node_urls: list[str]) -> Prometheus:
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        config = prometheus_config(node_urls, workdir)
        port = free_port()
        proc = Process(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
        )
        procs.append(proc.start())
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(url + "/-/ready") or not proc.alive(), 20, "prometheus")
        except TimeoutError:
            raise AssertionError(f"prometheus did not start:\n{proc.log_tail()}") from None
        assert proc.alive(), f"prometheus exited:\n{proc.log_tail()}"
        return Prometheus(proc, url)

    yield start
    for proc in procs:
        proc.stop()


def node_has_both_results(node: Any) -> bool:
    return bool(
        node_metric(node, "ringcache_served_bytes_total", 'result="hit"')
        and node_metric(node, "ringcache_served_bytes_total", 'result="miss"')
    )


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="Debian's prometheus is not installed")
async def test_prometheus_discovers_the_nodes_and_computes_the_hit_ratio(
    make_cluster, client_for, s3, bucket, start_prometheus
):
    cluster = make_cluster(2)
    ids = {}
    for node in cluster.nodes:
        with urllib.request.urlopen(node.url + "/v1/stats", timeout=5) as resp:
            ids[node.addr] = json.load(resp)["id"]

    async def read_twice(key: str) -> None:
        """A fresh client misses every block, a second fresh client hits every block."""
        for _ in range(2):
            # One owner per block: no hedged second request, so every count is exact.
            client = await client_for(cluster, owners_to_try=1)
            await client.read(f"s3://{bucket}/{key}")

    # A node exports ringcache_served_bytes_total{result=...} only from the first request
    # of that kind, and rate() cannot count a series' first sample. So before Prometheus
    # takes its baseline, give each node one hit and one miss (each node's blocks are
    # missed once and hit once, so the ratios stay exactly 0.5).
    for i in range(20):
        if all(node_has_both_results(n) for n in cluster.nodes):
            break
        s3.put_object(Bucket=bucket, Key=f"small{i}", Body=os.urandom(1000))
        await read_twice(f"small{i}")
    assert all(node_has_both_results(n) for n in cluster.nodes)

    prom = start_prometheus([n.url for n in cluster.nodes])
    sel = f'{{cluster="{cluster.name}"}}'

    def scraped(name: str) -> bool:
        return prom.value(f"sum({name}{sel})") == cluster.metric(name)

    await prom.wait("both nodes to be scraped", lambda: prom.value(f"count(up{sel} == 1)") == 2)
    await prom.wait("the baseline", lambda: scraped("ringcache_block_hits_total"))

    # Discovery: two SD entries listing the same two nodes make two targets, labelled
    # with the cluster and node id from etcd, and without the per-state label.
    targets = prom.targets()
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(ids), targets
    for target in targets:
        assert target["health"] == "up", target
        assert target["labels"]["cluster"] == cluster.name
        assert target["labels"]["node"] == ids[target["labels"]["instance"]]
        assert "state" not in target["labels"]

    # The known pattern: 3 blocks missed once, then hit once.
    data = os.urandom(2 * BS + 5)
    s3.put_object(Bucket=bucket, Key="a", Body=data)
    before = cluster.metric("ringcache_block_misses_total")
    await read_twice("a")
    assert cluster.metric("ringcache_block_misses_total") == before + 3

    for name in ("ringcache_block_hits_total", "ringcache_block_misses_total"):
        await prom.wait(f"{name} to be scraped", lambda name=name: scraped(name))
    assert prom.value(f"sum(ringcache_served_bytes_total{sel})") == cluster.metric(
        "ringcache_served_bytes_total"
    )
    seen = time.time()
    await prom.wait(
        "the recording rules to be evaluated",
        lambda: (
            (prom.value(f"timestamp(cluster:ringcache_block_hit_ratio:rate5m{sel})") or 0)
            > seen + 0.1
        ),
    )

    # Recording rules (rates over 5 minutes, which here cover the whole test).
    assert prom.value(f"cluster:ringcache_block_hit_ratio:rate5m{sel}") == pytest.approx(0.5)
    assert prom.value(f"cluster:ringcache_byte_hit_ratio:rate5m{sel}") == pytest.approx(0.5)
    for rule in ("block_hit_ratio", "byte_hit_ratio"):
        per_node = prom.query(f"cluster_node:ringcache_{rule}:rate5m{sel}")
        # Only nodes that served blocks in the window have a ratio; each missed and hit
        # its blocks once.
        assert per_node and {r["metric"]["node"] for r in per_node} <= set(ids.values())
        assert [float(r["value"][1]) for r in per_node] == pytest.approx([0.5] * len(per_node))

    # The raw expressions of docs/metrics.md: since the nodes started.
    hits, misses = (f"sum(ringcache_block_{k}_total{sel})" for k in ("hits", "misses"))
    assert prom.value(f"{hits} / ({hits} + {misses})") == pytest.approx(0.5)
    hit_bytes = f'sum(ringcache_served_bytes_total{{cluster="{cluster.name}",result="hit"}})'
    all_bytes = f"sum(ringcache_served_bytes_total{sel})"
    assert prom.value(f"{hit_bytes} / {all_bytes}") == pytest.approx(0.5)
    assert prom.value(hits) == cluster.metric("ringcache_block_hits_total")
    assert prom.value(hit_bytes) == cluster.metric("ringcache_served_bytes_total", 'result="hit"')

    # Every query of the Grafana dashboard is valid PromQL on this Prometheus, names only
    # metrics that exist, and its hit ratio panels show the pattern's 0.5.
    exported = set()
    for node in cluster.nodes:
        with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#"):
                    exported.add(line.split("{")[0].split(" ")[0])
    values = {}
    for title, expr in grafana_queries(cluster.name):
        names = set(re.findall(r"\b(ringcache_[a-z0-9_]+|up)\b(?!:)", expr))
        unknown = names - exported - declared_metric_names() - {"up"}
        assert not unknown, f"panel {title!r} uses unknown metrics {unknown}"
        values[title] = prom.query(expr)  # raises unless Prometheus accepts it
    for title in ("Hit ratio (count)", "Hit ratio (bytes)"):
        assert [float(r["value"][1]) for r in values[title]] == pytest.approx([0.5]), title
    assert [float(r["value"][1]) for r in values["Nodes up"]] == [2.0]


def declared_metric_names() -> set[str]:
    """Sample names of every ringcache metric the code declares, used yet or not (a node
    exports a labelled counter only after its first increment; mountd exports the client
    metrics)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for module in (node_metrics, client_metrics, gateway_metrics):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                for family in obj.describe():
                    names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(GRAFANA.read_text()))


def grafana_queries(cluster: str) -> list[tuple[str, str]]:
    """(panel title, query) for every panel, with Grafana's variables filled in."""
    subst = {
        "$cluster": cluster,
        "$node": ".+",
        "$__rate_interval": "5m",
        "$__range": "5m",
        "$__interval": "15s",
    }
    out = []
    for panel in load_dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in subst.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown variable in {target['expr']!r}"
            out.append((panel["title"], expr))
    return out


def test_grafana_dashboard_is_well_formed():
    doc = load_dashboard()
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"cluster", "node"} <= set(variables)
    panels = doc["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'cluster="$cluster"' in target["expr"], (panel["title"], target["expr"])
    titles = " | ".join(p["title"] for p in panels).lower()
    for topic in (
        "hit ratio (count)",
        "hit ratio (bytes)",
        "served bytes by node",
        "origin bytes",
        "origin requests",
        "latency p50 / p99",
        "usage vs capacity",
        "evictions",
        "fallbacks by reason",
        "block reads by source",
        "warmup progress",
    ):
        assert topic in titles, topic
    assert len(grafana_queries("c")) >= 20
