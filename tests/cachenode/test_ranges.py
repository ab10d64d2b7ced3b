"""Byte ranges inside a block from a real node: on a miss, on small and large hits, and
the ranges it refuses (416, the node keeps serving)."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlencode

import aiohttp
import pytest

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.blocks import block_id
from clientlib.errors import RangeNotSatisfiable
from clientlib.ranges import Span, parse_range

SIZE = BS + 70_000  # block 0 is whole (large hit, sendfile); block 1 is 70,000 bytes


async def test_ranges_of_misses_and_hits_are_exact(make_cluster, s3, bucket):
    node = make_cluster(1).nodes[0]
    data = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    etag = s3.head_object(Bucket=bucket, Key="r")["ETag"].strip('"')
    url = f"s3://{bucket}/r"

    def query(index: int) -> dict[str, str]:
        return {"src": url, "ver": etag, "size": str(SIZE), "bs": str(BS), "i": str(index)}

    async with aiohttp.ClientSession() as session:
        for index, block in ((0, data[:BS]), (1, data[BS:])):
            bid = block_id(f"s3://{bucket}", "r", etag, BS, index)
            # The first is a miss (the node fetches the whole block), then hits.
            for header, start, stop, result in (
                ("bytes=100-199", 100, 200, "miss"),
                ("bytes=100-199", 100, 200, "hit"),
                ("bytes=0-0", 0, 1, "hit"),
                (f"bytes={len(block) - 10}-", len(block) - 10, len(block), "hit"),
                ("bytes=-4096", len(block) - 4096, len(block), "hit"),
                (f"bytes=5-{len(block) + 100}", 5, len(block), "hit"),  # clamped to the end
            ):
                async with session.get(
                    f"{node.url}/v1/blocks/{bid}", params=query(index), headers={"Range": header}
                ) as resp:
                    assert resp.status == 206, (index, header)
                    assert resp.headers["X-Ringcache-Result"] == result
                    assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(block)}"
                    assert await resp.read() == block[start:stop], (index, header)
            # The whole block as a range is the whole block, as a 200.
            async with session.get(
                f"{node.url}/v1/blocks/{bid}", headers={"Range": f"bytes=0-{len(block) - 1}"}
            ) as resp:
                assert resp.status == 200 and "Content-Range" not in resp.headers
                assert await resp.read() == block


async def test_bad_ranges_are_416_and_the_node_keeps_serving(make_cluster, s3, bucket):
    node = make_cluster(1).nodes[0]
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    bid = block_id(f"s3://{bucket}", "k", etag, BS, 0)
    query = {"src": f"s3://{bucket}/k", "ver": etag, "size": "1000", "bs": str(BS), "i": "0"}
    bad = [
        ("bytes=1000-1001", "not inside"),  # past the end of the block
        ("bytes=50-10", "Range"),  # backwards
        ("bytes=5-3", "Range"),
        ("bytes=-0", "Range"),  # a suffix of no bytes
        ("bytes=-00", "Range"),
        ("bytes=0-1,5-6", "Range"),  # several ranges
        ("bytes=0-1, -5", "Range"),
        ("items=0-5", "Range"),
        ("bytes=x-y", "Range"),
        ("bytes=-", "Range"),
        ("bytes=", "Range"),
        ("bytes=+1-2", "Range"),
        ("bytes= 1-2", "Range"),
        ("bytes=1_0-20", "Range"),
        ("bytes=99999999999999999999999-", "not inside"),
        ("bytes=" + "9" * 5000 + "-", "Range"),  # more digits than int() takes
    ]
    non_ascii = ["bytes=1-\u0663", "bytes=\u00b2-5", "bytes=-\uff13"]
    async with aiohttp.ClientSession() as session:
        for when in ("miss", "hit"):  # the first "bytes=0-" below fills the block
            for header, message in bad:
                async with session.get(
                    f"{node.url}/v1/blocks/{bid}", params=query, headers={"Range": header}
                ) as resp:
                    doc = await resp.json(content_type=None)
                    assert resp.status == 416, (when, header[:40], resp.status, doc)
                    assert message in doc["error"], (when, header[:40], doc)
            for header in non_ascii:  # sent as UTF-8 on a raw socket
                reply = await raw_get(node, f"/v1/blocks/{bid}", query, {"Range": header})
                assert reply.startswith(b"HTTP/1.1 416 "), (when, header, reply[:200])
            async with session.get(
                f"{node.url}/v1/blocks/{bid}",
                params=query,
                headers=[("Range", "bytes=0-1"), ("Range", "bytes=5-6")],
            ) as resp:
                assert resp.status == 416, (when, "two Range headers", resp.status)
            # Edges that are fine: from 0 on, and numbers past the end are clamped.
            for header in ("bytes=0-", "bytes=0-99999999999999999999999", "bytes=-5000"):
                async with session.get(
                    f"{node.url}/v1/blocks/{bid}", params=query, headers={"Range": header}
                ) as resp:
                    assert resp.status == 200 and await resp.read() == b"x" * 1000, header
            async with session.get(f"{node.url}/v1/blocks/{bid}", params=query) as resp:
                assert resp.status == 200 and await resp.read() == b"x" * 1000
    assert node.alive()


async def raw_get(node, path: str, query: dict[str, str], headers: dict[str, str]) -> bytes:  # type: ignore[no-untyped-def]
    """A GET whose header values go out as UTF-8 (aiohttp's client would refuse them)."""
    host, port = node.addr.split(":")
    lines = [f"GET {path}?{urlencode(query)} HTTP/1.1", f"Host: {node.addr}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_range_of_a_damaged_block_is_a_hit_only_where_its_parts_are_whole(
    make_cluster, s3, bucket
):
    """A range is checked by the 256 KiB parts that hold it (clientlib.blockfile), so damage
    elsewhere in the block does not make it a miss, and damage inside it is never sent."""
    node = make_cluster(1).nodes[0]
    data = os.urandom(BS)
    s3.put_object(Bucket=bucket, Key="p", Body=data)
    etag = s3.head_object(Bucket=bucket, Key="p")["ETag"].strip('"')
    query = {"src": f"s3://{bucket}/p", "ver": etag, "size": str(BS), "bs": str(BS), "i": "0"}
    bid = block_id(f"s3://{bucket}", "p", etag, BS, 0)
    async with aiohttp.ClientSession() as session:

        async def get(start: int, stop: int) -> str:
            headers = {"Range": f"bytes={start}-{stop - 1}"}
            url = f"{node.url}/v1/blocks/{bid}"
            async with session.get(url, params=query, headers=headers) as resp:
                assert resp.status == 206 and await resp.read() == data[start:stop]
                return resp.headers["X-Ringcache-Result"]

        assert await get(0, 100) == "miss"
        (path,) = (p for p in (node.cache_dir / "blocks").rglob("*") if p.is_file())
        raw = bytearray(path.read_bytes())
        raw[BS - 1000] ^= 0xFF  # in the last part
        path.write_bytes(bytes(raw))
        assert await get(1_000_000, 1_065_536) == "hit"
        assert await get(BS - 2000, BS) == "miss"  # dropped and fetched again
        assert await get(BS - 2000, BS) == "hit"


def test_parse_range_takes_one_ascii_range_and_clamps_it_to_the_block() -> None:
    """The Range parser alone: the forms both serving paths accept, and what is 416."""
    assert parse_range([], 1000) == Span(0, 1000, 1000)
    assert parse_range(["bytes=100-199"], 1000) == Span(100, 200, 1000)
    assert parse_range(["BYTES=990-"], 1000) == Span(990, 1000, 1000)
    assert parse_range(["bytes=-10"], 1000) == Span(990, 1000, 1000)
    assert parse_range(["bytes=5-5000"], 1000) == Span(5, 1000, 1000)
    assert parse_range(["bytes=0-999"], 1000).status == 200
    assert parse_range(["bytes=0-0"], 1000).headers() == {"Content-Range": "bytes 0-0/1000"}
    for bad in (
        ["bytes=1000-"],
        ["bytes=-0"],
        ["bytes=5-3"],
        ["bytes=-"],
        ["bytes=1-2,4-5"],
        ["bytes=" + "9" * 5000 + "-"],
        ["bytes=\u0663-5"],
        ["bytes=0-1", "bytes=2-3"],
    ):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad, 1000)
