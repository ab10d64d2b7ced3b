"""Fuzzing the node's HTTP API and the parsers behind it (hypothesis).

Whatever arrives, the answer is a clear 4xx (or a 2xx for a valid request), never a 5xx,
and the daemon keeps running.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
from urllib.parse import quote, urlencode

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachenode.verifier import Verifier
from clientlib.auth import Claims
from clientlib.blocks import check_block_id, slices_for_range
from clientlib.errors import BadRequest, Unauthorized
from clientlib.urls import split_url

FUZZ = settings(
    max_examples=int(os.environ.get("RINGCACHE_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

text = st.text(max_size=80)
hexish = st.text(alphabet="0123456789abcdefABCDEF./%-", min_size=0, max_size=40)
query_values = st.one_of(text, st.integers(-(2**70), 2**70).map(str), hexish)
queries = st.dictionaries(
    st.sampled_from(["src", "ver", "size", "bs", "i", "x"]), query_values, max_size=6
)
msgpack_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=3000),
    msgpack_docs.map(lambda d: msgpack.packb(d, use_bin_type=True)),
    st.builds(lambda ids: msgpack.packb({"ids": ids}), st.lists(hexish, max_size=20)),
    st.builds(
        lambda items: msgpack.packb({"blocks": items}),
        st.lists(
            st.dictionaries(st.sampled_from(["id", "src", "ver", "size", "bs", "i"]), query_values),
            max_size=5,
        ),
    ),
)
paths = st.one_of(
    st.builds(lambda s: "/v1/blocks/" + quote(s, safe=""), text),
    st.builds(lambda s: "/v1/blocks/" + s, hexish),
    st.sampled_from(["/v1/blocks/query", "/v1/blocks/evict", "/v1/blocks/warm", "/v1/admin/drain"]),
    st.builds(lambda s: "/" + quote(s), text),
)
headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Authorization", "X-Anything", "Range"]),
    st.one_of(
        st.just("application/msgpack"), st.text(alphabet="abc ./=Ringcache-0123", max_size=60)
    ),
    max_size=3,
)


@pytest.fixture
def node(make_cluster):  # type: ignore[no-untyped-def]
    return make_cluster(1).nodes[0]


@FUZZ
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    path=paths,
    query=queries,
    body=bodies,
    extra=headers,
)
def test_node_api_answers_every_request_without_a_5xx(node, method, path, query, body, extra):  # type: ignore[no-untyped-def]
    host, port = node.addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    target = path + ("?" + urlencode(query) if query else "")
    if path == "/v1/admin/drain":
        extra = {**extra, "Authorization": "Ringcache x.1.y"}  # never drain the fuzz target
    try:
        conn.request(
            method, target, body=body if method in ("PUT", "POST") else None, headers=extra
        )
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (method, target, resp.status, payload[:300])
    if resp.status >= 400 and method != "HEAD" and payload.startswith(b"{"):
        assert json.loads(payload)["error"]
    assert node.alive()


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_url_parsing_only_ever_raises_bad_request(url):  # type: ignore[no-untyped-def]
    try:
        origin, key = split_url(url)
    except BadRequest:
        return
    assert origin.startswith(("s3://", "file://"))
    if origin == "file://":
        assert key.startswith("/") and "/../" not in key + "/"


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_block_id_check_accepts_only_32_lowercase_hex(value):  # type: ignore[no-untyped-def]
    try:
        assert check_block_id(value) == value
    except BadRequest:
        return
    assert len(value) == 32 and set(value) <= set("0123456789abcdef")


@given(
    size=st.integers(0, 10**9),
    block=st.sampled_from([65536, 4 << 20]),
    offset=st.integers(-5, 10**9),
    length=st.integers(-5, 10**8),
)
def test_range_slices_cover_exactly_the_readable_bytes(size, block, offset, length):  # type: ignore[no-untyped-def]
    try:
        slices = slices_for_range(size, block, offset, length)
    except BadRequest:
        assert offset < 0 or length < 0
        return
    covered = sum(s.stop - s.start for s in slices)
    assert covered == max(0, min(size, offset + length) - offset)
    assert all(0 <= s.start < s.stop <= block for s in slices)


@given(
    header=st.one_of(
        st.none(),
        st.text(max_size=200),
        st.builds(lambda a, b, c: f"Ringcache {a}.{b}.{c}", text, st.integers(), text),
    )
)
def test_signature_check_only_ever_raises_unauthorized(header):  # type: ignore[no-untyped-def]
    verifier = Verifier(b"s" * 32)
    with pytest.raises(Unauthorized):
        verifier.verify("GET", "/v1/blocks/x", header)


@given(st.text(max_size=200))
def test_token_payload_parsing_only_ever_raises_unauthorized(payload):  # type: ignore[no-untyped-def]
    with contextlib.suppress(Unauthorized):
        Claims.from_payload(payload)
