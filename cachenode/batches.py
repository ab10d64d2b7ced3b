"""The msgpack bodies of the batch routes (query, evict, warm): bounded and checked.

A batch body is at most :data:`MAX_BATCH_BODY` bytes and :data:`MAX_BATCH` ids; every id
and every block's source fields are checked before use (docs/http-api.md).
"""

from __future__ import annotations

from typing import Any

import msgpack
from aiohttp import web

from clientlib.auth import Claims
from clientlib.blocks import BlockRef, check_block_id
from clientlib.errors import BadRequest

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_BODY",
    "MAX_WARM",
    "ids_from_doc",
    "msgpack_body",
    "msgpack_response",
    "refs_from_doc",
]

MAX_BATCH = 10_000
MAX_BATCH_BODY = 4 * 1024 * 1024
MAX_WARM = 256


async def msgpack_body(request: web.Request, max_str_len: int = 64) -> Any:
    """The request's msgpack body, bounded in bytes, array length and string length."""
    if request.content_type != "application/msgpack":
        raise BadRequest("body must be application/msgpack")
    if request.content_length is None or request.content_length > MAX_BATCH_BODY:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BATCH_BODY, actual_size=request.content_length or 0
        )
    raw = await request.read()
    try:
        return msgpack.unpackb(raw, max_array_len=MAX_BATCH, max_str_len=max_str_len, max_map_len=8)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadRequest(f"malformed msgpack body: {exc}") from None


def msgpack_response(doc: Any) -> web.Response:
    """``doc`` as an ``application/msgpack`` answer."""
    return web.Response(body=msgpack.packb(doc), content_type="application/msgpack")


def ids_from_doc(doc: Any) -> list[str]:
    """The block ids of a ``{"ids": [...]}`` body, each checked."""
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("body must be a map {'ids': [block id, ...]}")
    return [check_block_id(i) for i in ids]


def refs_from_doc(
    doc: Any, claims: Claims, block_size: int, limit: int = MAX_BATCH
) -> list[tuple[str, BlockRef]]:
    """The blocks a ``{"blocks": [{"id", "src", "ver", "size", "bs", "i"}, ...]}`` body
    names, each checked against its id, the cluster's block size and ``claims``."""
    items = doc.get("blocks") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) > limit:
        raise BadRequest(f"body must be a map {{'blocks': [...]}} of at most {limit}")
    refs = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise BadRequest("each block is a map with 'id', 'src', 'ver', 'size', 'bs', 'i'")
        query = {k: str(v) for k, v in item.items() if k != "id"}
        block_id = check_block_id(item["id"])
        ref = BlockRef.from_fields(block_id, query, block_size)
        claims.require(ref.url)
        refs.append((block_id, ref))
    return refs
