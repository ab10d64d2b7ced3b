"""Range GETs on the hit fast path (cachenode.fasthits) against a real node: a range of a
block in the memory tier or in the page cache is exact and answered without aiohttp; a
part that does not match its checksum is never served; refusals, 416s and multi-range
requests are still aiohttp's.

As in test_fasthits, responses from the fast path carry no ``Server`` header (aiohttp's
always do), which is how these tests tell who answered.
"""

from __future__ import annotations

import asyncio

import aiohttp

from cachenode.httphead import parse_head
from clientlib.auth import Credentials
from clientlib.blockfile import PART_SIZE
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.launcher import Node
from tests.cachenode.test_fasthits import SMALL, cached_blocks, head, raw_exchange
from tests.conftest import make_token, node_metric

#: Ranges of a block of ``BS`` bytes, as (first, last) byte: within a part, across two
#: parts, the last bytes (clamped past the end), a single byte.
RANGES = [
    (100, 65_635),
    (PART_SIZE - 4096, PART_SIZE + 65_535),
    (BS - 1000, BS + 5000),
    (3 * PART_SIZE, 3 * PART_SIZE),
]


def test_parse_head_takes_one_range_header_only() -> None:
    bid = "0a" * 16
    one = parse_head(head(f"GET /v1/blocks/{bid}?src=x HTTP/1.1", "Host: x", "range: bytes=5-9"))
    assert one is not None
    assert one.range == "bytes=5-9" and one.block_id == bid
    assert one.target == f"/v1/blocks/{bid}?src=x"
    plain = parse_head(head(f"GET /v1/blocks/{bid} HTTP/1.1", "Host: x"))
    assert plain is not None and plain.range is None
    for other in (
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Range: bytes=0-1", "Range: bytes=4-5"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Range: bytes=0-1", "Content-Length: 3"),
        head(f"HEAD /v1/blocks/{bid} HTTP/1.1", "Range: bytes=0-1"),
        head(f"GET /v1/blocks/{bid} HTTP/1.1", "Range: bytes=0-1", "Expect: 100-continue"),
    ):
        assert parse_head(other) is None, other


async def ranged_get(
    session: aiohttp.ClientSession, node: Node, bid: str, value: str, query: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET of ``bid`` with ``Range: value``."""
    target = f"{node.url}/v1/blocks/{bid}" + (f"?{query}" if query else "")
    async with session.get(target, headers={"Range": value}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def assert_fast_range(
    answer: tuple[int, dict[str, str], bytes], data: bytes, first: int, last: int
) -> None:
    """``answer`` is the fast path's 206 of bytes first..last of ``data`` (clamped)."""
    status, headers, body = answer
    last = min(last, len(data) - 1)
    assert status == 206
    assert "Server" not in headers  # the fast path answered
    assert headers["X-Ringcache-Result"] == "hit"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
    assert body == data[first : last + 1]


async def test_ranges_from_memory_and_page_cache_are_exact_and_fast(
    make_cluster, client_for, tmp_path
):
    """A small block from the memory tier, a large block's sealed copy there, and a
    large block read part by part from the page cache (memory tier off): each range is
    exact, answered by the fast path and counted as a hit of its own bytes."""
    cluster = make_cluster(1, extra=["--memory-cache", "64MiB"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    (small, small_data), (large, large_data) = await cached_blocks(client, tmp_path, [SMALL, BS])
    async with aiohttp.ClientSession() as session:
        # Read and checked; the small block kept in the memory tier at once, the large
        # one at its second whole-block hit.
        for bid, data in ((small, small_data), (large, large_data), (large, large_data)):
            async with session.get(f"{node.url}/v1/blocks/{bid}") as resp:
                assert await resp.read() == data
        # The files are corrupted: what is served comes from the copies checked before.
        for bid in (small, large):
            (path,) = node.cache_dir.glob(f"**/blocks/*/{bid}.*")
            with path.open("r+b") as f:
                f.write(b"\0" * 4096)
        hits = node_metric(node, "ringcache_block_hits_total")
        hit_bytes = node_metric(node, "ringcache_served_bytes_total", 'result="hit"')
        answer = await ranged_get(session, node, small, "bytes=10-2000")
        assert_fast_range(answer, small_data, 10, 2000)
        expected_bytes = 1991
        for first, last in RANGES:
            answer = await ranged_get(session, node, large, f"bytes={first}-{last}")
            assert_fast_range(answer, large_data, first, last)
            expected_bytes += min(last, BS - 1) - first + 1
        answer = await ranged_get(session, node, large, "bytes=-300")  # a suffix
        assert_fast_range(answer, large_data, BS - 300, BS - 1)
        expected_bytes += 300
    assert node_metric(node, "ringcache_block_hits_total") == hits + 2 + len(RANGES)
    assert (
        node_metric(node, "ringcache_served_bytes_total", 'result="hit"')
        == hit_bytes + expected_bytes
    )
    cluster.stop()

    cluster = make_cluster(1, extra=["--memory-cache", "0"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    (tmp_path / "pc").mkdir()
    ((large, large_data),) = await cached_blocks(client, tmp_path / "pc", [BS])
    async with aiohttp.ClientSession() as session:
        for first, last in RANGES:
            answer = await ranged_get(session, node, large, f"bytes={first}-{last}")
            assert_fast_range(answer, large_data, first, last)


async def test_a_part_that_does_not_match_is_never_served(make_cluster, client_for, tmp_path):
    """A range in a part corrupted on disk (in the page cache, same length) is handed to
    aiohttp, which checks the whole block, drops it and fetches it again from the origin;
    the bad bytes never leave the node."""
    cluster = make_cluster(1, extra=["--memory-cache", "0"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    ((bid, data),) = await cached_blocks(client, tmp_path, [BS])
    url = f"file://{tmp_path}/fast0"
    query = client.block_ref(await client.stat(url), 0).query()
    (path,) = node.cache_dir.glob(f"**/blocks/*/{bid}.*")
    with path.open("r+b") as f:
        f.seek(2 * PART_SIZE + 100)
        f.write(b"\0" * 100)
    first, last = 2 * PART_SIZE, 2 * PART_SIZE + 65_535
    async with aiohttp.ClientSession() as session:
        # A range of a part that still matches is served (only its part is checked).
        answer = await ranged_get(session, node, bid, "bytes=0-4095", query)
        assert_fast_range(answer, data, 0, 4095)
        status, headers, body = await ranged_get(session, node, bid, f"bytes={first}-{last}", query)
        assert status == 206 and body == data[first : last + 1]
        assert "Server" in headers and headers["X-Ringcache-Result"] == "miss"  # refetched
        # The bad file was dropped and the block stored again, under the same name.
        for _ in range(100):
            if path.exists() and path.read_bytes()[:BS] == data:
                break
            await asyncio.sleep(0.05)
        assert path.read_bytes()[:BS] == data
    # The block fetched again is whole and served by the fast path once more (on a new
    # connection: the one that had the miss is aiohttp's).
    async with aiohttp.ClientSession() as session:
        answer = await ranged_get(session, node, bid, f"bytes={first}-{last}", query)
        assert_fast_range(answer, data, first, last)


async def test_range_requests_are_authorised_as_full_hits(
    make_cluster, client_for, tmp_path, secret
):
    """On a secured cluster a range needs a signature whose token covers the block's
    source: none is a 401, another source's a 403 (both aiohttp's), the right one a fast
    206."""
    cluster = make_cluster(1, extra=["--token-file", str(secret), "--memory-cache", "0"])
    node = cluster.nodes[0]
    operator = await client_for(cluster, token_file=str(secret), memory_cache_bytes=0)
    ((bid, data),) = await cached_blocks(operator, tmp_path, [BS])
    url = f"file://{tmp_path}/fast0"
    target = f"/v1/blocks/{bid}?{operator.block_ref(await operator.stat(url), 0).query()}"
    allowed = Credentials.from_file(await make_token(cluster, secret, url))
    other = Credentials.from_file(await make_token(cluster, secret, f"file://{tmp_path}/other"))

    def request(creds: Credentials | None) -> bytes:
        lines = [f"GET {target} HTTP/1.1", "Host: x", "Range: bytes=1000-70000"]
        if creds is not None:
            lines.append(
                f"Authorization: {creds.headers('GET', target, node=node.node_id)['Authorization']}"
            )
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    ((unsigned, _),) = await asyncio.to_thread(raw_exchange, node, request(None), 1)
    assert unsigned.startswith(b"HTTP/1.1 401 ") and b"Server:" in unsigned
    ((foreign, _),) = await asyncio.to_thread(raw_exchange, node, request(other), 1)
    assert foreign.startswith(b"HTTP/1.1 403 ") and b"Server:" in foreign
    ((signed, body),) = await asyncio.to_thread(raw_exchange, node, request(allowed), 1)
    assert signed.startswith(b"HTTP/1.1 206 ") and b"Server:" not in signed
    assert f"Content-Range: bytes 1000-70000/{BS}".encode() in signed
    assert body == data[1000:70001]


async def test_unsatisfiable_and_multiple_ranges_are_still_aiohttps(
    make_cluster, client_for, tmp_path
):
    """Pipelined on one connection: a fast range, then requests the fast path leaves to
    aiohttp (a range past the end, two ranges in one header, two Range headers, the
    whole block as a range), answered in order as before."""
    cluster = make_cluster(1, extra=["--memory-cache", "0"])
    node = cluster.nodes[0]
    client = await client_for(cluster, memory_cache_bytes=0)
    ((bid, data),) = await cached_blocks(client, tmp_path, [BS])

    def get(*ranges: str) -> str:
        lines = [f"GET /v1/blocks/{bid} HTTP/1.1", "Host: x", *(f"Range: {r}" for r in ranges)]
        return "\r\n".join(lines) + "\r\n\r\n"

    pipelined = [
        get("bytes=0-99"),
        get(f"bytes={BS}-"),
        get("bytes=0-1,5-6"),
        get("bytes=0-1", "bytes=5-6"),
        get("bytes=0-"),
        get("bytes=100-199"),
    ]
    answers = await asyncio.to_thread(
        raw_exchange, node, "".join(pipelined).encode(), len(pipelined)
    )
    statuses = [int(h.split(b" ")[1]) for h, _ in answers]
    assert statuses == [206, 416, 416, 416, 200, 206]
    assert b"Server:" not in answers[0][0]
    assert all(b"Server:" in h for h, _ in answers[1:])  # handed over, in order
    assert answers[0][1] == data[:100] and answers[5][1] == data[100:200]
    assert answers[4][1] == data
    # A fresh connection: the unsatisfiable range alone is aiohttp's 416 too.
    ((alone, _),) = await asyncio.to_thread(raw_exchange, node, get(f"bytes={BS + 5}-").encode(), 1)
    assert alone.startswith(b"HTTP/1.1 416 ") and b"Server:" in alone
