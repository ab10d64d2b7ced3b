"""What both hit paths decide, in one place: the aiohttp routes (:mod:`cachenode.blockroutes`)
and the fast path (:mod:`cachenode.fasthits`) differ only in how they talk to the socket.

- Authorisation: a request's claims (:meth:`HitCore.claims`), and what a block GET may
  read (:meth:`HitCore.lookup`): a GET naming its source needs a token covering that
  source, cached or not; a GET by block id alone (another node's handoff) needs an
  all-access token, and on a secured cluster its answer must carry this node's proof
  (:meth:`Verifier.prove`), which only the aiohttp path sends.
- Counting: block requests in flight (:meth:`NodeContext.enter`) and hot blocks
  (:meth:`HitCore.begin_get`), and the headers a hit carries (:meth:`HitCore.hit_headers`).
  The fast path's small hits, answered within one call, are never in flight: they count
  as hot-block GETs that began and ended at once (:meth:`HotBlocks.hit`).
- Ranges (:mod:`cachenode.ranges`) and the ``sendfile`` rules (:mod:`cachenode.sendfile`:
  plain TCP only, after the transport's buffer) are the other shared pieces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from cachenode.context import NodeContext
from cachenode.verifier import Verifier
from clientlib.auth import ALL_ACCESS, Claims
from clientlib.blocks import BlockRef

__all__ = ["HOT_HEADER", "RESULT_HEADER", "HitCore", "Lookup"]

#: Whether a block answer came from the store (``hit``) or a fetch (``miss``).
RESULT_HEADER = "X-Ringcache-Result"
#: On a hot block's answer: readers should spread over its replicas (clientlib.client).
HOT_HEADER = "X-Ringcache-Hot"


class Lookup(NamedTuple):
    """What a block GET may be answered with, once authorised."""

    #: The block's source, from the request; None for a lookup by block id alone, which
    #: never reaches the origin (only a hit, or a fetch already in flight, answers it).
    ref: BlockRef | None
    #: The answer must carry this node's proof over its bytes (a secured cluster's
    #: lookup by id alone): only the whole block, once known, can be sent.
    proven: bool


class HitCore:
    """The decisions about a block GET that do not depend on the path serving it."""

    def __init__(self, node: NodeContext, verifier: Verifier | None) -> None:
        self.node = node
        self.verifier = verifier

    def claims(
        self, method: str, target: str, authorization: str | None, digest: str = ""
    ) -> Claims:
        """The claims of a request for ``target`` (path and query, as signed): everything
        on an open cluster; else those of its valid signature
        (:class:`clientlib.errors.Unauthorized` without one)."""
        if self.verifier is None:
            return ALL_ACCESS
        return self.verifier.verify(method, target, authorization, digest)

    def lookup(self, claims: Claims, block_id: str, fields: Mapping[str, str]) -> Lookup:
        """What ``claims`` may read of ``block_id`` asked with query ``fields``;
        :class:`clientlib.errors.Forbidden` (or :class:`BadRequest` for bad fields) if
        nothing. Checked before the store: a cached block is no less the firm's data."""
        if "src" in fields:
            ref = BlockRef.from_fields(block_id, fields, self.node.block_size())
            claims.require(ref.url)
            return Lookup(ref, False)
        claims.require_all_access("a lookup by block id alone")
        return Lookup(None, self.verifier is not None)

    def begin_get(self, block_id: str) -> bool:
        """Count a block GET in (:class:`cachenode.hotblocks.HotBlocks`); whether the
        block is hot. Pair with :meth:`end_get`."""
        return self.node.hot.begin(block_id)

    def end_get(self, block_id: str) -> None:
        """Count a block GET out (answered, failed or given up)."""
        self.node.hot.end(block_id)

    @staticmethod
    def hit_headers(hot: bool) -> dict[str, str]:
        """The headers of a hit's answer beyond its length and range."""
        if hot:
            return {RESULT_HEADER: "hit", HOT_HEADER: "1"}
        return {RESULT_HEADER: "hit"}
