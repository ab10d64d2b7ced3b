"""The built-in web dashboard: one static page served by every node, for sites without
Grafana. It polls ``/v1/cluster`` once a second and draws the cluster's hit ratio by
count and by bytes and each node's state, usage and rates (from the deltas between polls);
and ``/v1/gateways`` (served here), for a row per S3 gateway registered in etcd: its
requests by operation, errors, bytes and block sources, read from its ``/metrics``.

The page is self-contained (inline CSS and JS, no CDN), so it works on an air-gapped
cluster. It inserts data only as text, and is served with a Content-Security-Policy that
allows exactly its own inline script and style (by hash) and fetches to this node, so a
hostile node id in etcd could not run script even if the page had an escaping bug.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from pathlib import Path

from aiohttp import web

from cachenode.context import NodeContext
from clientlib.gateways import gateway_figures

__all__ = ["add_routes"]

PAGE = Path(__file__).with_name("static") / "dashboard.html"


def _csp(html: str) -> str:
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        digests = (hashlib.sha256(b.encode()).digest() for b in bodies)
        return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)

    return (
        "default-src 'none'; "
        f"script-src {hashes('script')}; "
        f"style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def add_routes(app: web.Application, node: NodeContext) -> None:
    """Serve the dashboard at ``GET /dashboard`` and its gateway figures at
    ``GET /v1/gateways``."""
    html = PAGE.read_text(encoding="utf-8")
    headers = {
        "Content-Security-Policy": _csp(html),
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    body = html.encode()

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)

    async def gateways(_: web.Request) -> web.Response:
        figures = await gateway_figures(await node.cluster_gateways())
        return web.json_response({"gateways": figures, "time": time.time()})

    app.router.add_get("/dashboard", page)
    app.router.add_get("/v1/gateways", gateways)
