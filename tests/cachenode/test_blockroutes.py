"""The block and node handlers one at a time, with aiohttp's mocked requests and
stand-ins for the store and the read-through (no node process, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from cachenode.blockroutes import BlockRoutes
from cachenode.context import NodeContext
from cachenode.hitcore import HitCore
from cachenode.noderoutes import NodeRoutes
from cachenode.store import BlockBytes
from cachenode.verifier import Verifier
from clientlib.auth import ALL_ACCESS, Claims
from clientlib.blocks import DEFAULT_BLOCK_SIZE, block_id
from clientlib.errors import Forbidden, RangeNotSatisfiable

#: The handlers keep their claims under a str key, as the middleware does.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

BID = "0a" * 16
DATA = bytes(range(256)) * 4


class Store:
    """Blocks in a dict, served as verified bytes (the memory tier's answer)."""

    def __init__(self, blocks: dict[str, bytes]) -> None:
        self.blocks = blocks

    def length(self, block_id: str) -> int | None:
        block = self.blocks.get(block_id)
        return None if block is None else len(block)

    async def open_block(self, block_id: str, part: Any = None) -> BlockBytes | None:
        block = self.blocks.get(block_id)
        return None if block is None else BlockBytes(block)


class ReadThrough:
    """A read-through with no fetch in flight."""

    def fetching(self, block_id: str) -> bool:
        return False

    def lookup_headers(self) -> dict[str, str]:
        return {}


def routes(blocks: dict[str, bytes], verifier: Verifier | None = None) -> BlockRoutes:
    node = NodeContext("n1")
    return BlockRoutes(Store(blocks), ReadThrough(), node, HitCore(node, verifier))  # type: ignore[arg-type]


def get(claims: Claims, path: str = f"/v1/blocks/{BID}", bid: str = BID, **headers: str) -> Any:
    request = make_mocked_request("GET", path, headers=CIMultiDict(headers), match_info={"id": bid})
    request["claims"] = claims
    return request


async def test_a_hit_by_id_is_the_block_and_a_range_is_its_bytes() -> None:
    handler = routes({BID: DATA})
    whole = await handler.get_block(get(ALL_ACCESS))
    assert whole.status == 200 and whole.body == DATA
    assert whole.headers["X-Ringcache-Result"] == "hit"
    part = await handler.get_block(get(ALL_ACCESS, Range="bytes=100-199"))
    assert part.status == 206 and part.body == DATA[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    with pytest.raises(RangeNotSatisfiable):
        await handler.get_block(get(ALL_ACCESS, Range=f"bytes={len(DATA)}-"))


async def test_a_lookup_by_id_of_a_block_not_cached_nor_fetched_is_404() -> None:
    response = await routes({}).get_block(get(ALL_ACCESS))
    assert response.status == 404


async def test_a_lookup_by_id_alone_needs_an_all_access_token() -> None:
    scoped = Claims(("s3://b/team",), "team")
    with pytest.raises(Forbidden):
        await routes({BID: DATA}).get_block(get(scoped))


async def test_a_source_outside_the_token_scope_is_refused_though_cached() -> None:
    scoped = Claims(("s3://bucket/team",), "team")
    other = block_id("s3://bucket", "other", "v", DEFAULT_BLOCK_SIZE, 0)
    query = f"?src=s3%3A%2F%2Fbucket%2Fother&ver=v&size={len(DATA)}&bs={DEFAULT_BLOCK_SIZE}&i=0"
    with pytest.raises(Forbidden):
        await routes({other: DATA}).get_block(get(scoped, f"/v1/blocks/{other}{query}", other))


async def test_healthz_says_starting_until_joined_and_draining_after() -> None:
    node = NodeContext("n1")
    handler = NodeRoutes(Store({}), ReadThrough(), node, None)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/healthz")
    assert (await handler.healthz(request)).status == 503
    node.joined = True
    assert (await handler.healthz(request)).status == 200
    node.draining = True
    assert (await handler.healthz(request)).status == 503


def test_the_hit_core_decides_what_a_block_get_may_read() -> None:
    """HitCore.lookup, shared by both paths: a named source must be in scope; a lookup by
    id alone needs all access, and on a secured cluster its answer carries a proof."""
    node = NodeContext("n1")
    open_core, secured = HitCore(node, None), HitCore(node, Verifier(b"s" * 32, "n1"))
    assert open_core.lookup(ALL_ACCESS, BID, {}) == (None, False)
    assert secured.lookup(ALL_ACCESS, BID, {}) == (None, True)
    scoped = Claims(("s3://bucket/team",), "team")
    with pytest.raises(Forbidden):
        open_core.lookup(scoped, BID, {})
    mine = block_id("s3://bucket", "team/x", "v", DEFAULT_BLOCK_SIZE, 0)
    fields = {"src": "s3://bucket/team/x", "ver": "v", "size": "10", "bs": "4194304", "i": "0"}
    ref, proven = secured.lookup(scoped, mine, fields)
    assert ref is not None and ref.url == "s3://bucket/team/x" and not proven
    assert open_core.claims("GET", "/v1/blocks/x", None) == ALL_ACCESS
