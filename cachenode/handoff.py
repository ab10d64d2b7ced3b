"""Handoff: before a miss goes to the origin, ask the nodes that are likely to hold it.

When membership changes, a block's new owner starts empty while the old owner still has
the block. A node that misses therefore first asks, with a short timeout and a hit-only
lookup (``GET /v1/blocks/{id}`` without source parameters, which never touches the
origin and so can never recurse):

- the block's owner on the ring without this node (where the block lived before this
  node joined: scale-out),
- its owner on the ring that still counts draining nodes (a draining node keeps serving
  until the others have taken its blocks),
- its owner on the previous ring this node saw, and the current primary owner (when this
  node serves the block as a replica of a hot block).

Only if none has it does the miss go to the origin, so a scale-out or a drain does not
crash the hit rate or send a burst to the origin.

Blocks move only when membership does, so the first three are asked only while that can
help: for ``window`` seconds (``--handoff-window``, default :data:`DEFAULT_WINDOW`) after
this node joined or its view of the ring last changed (a node added, removed,
restarted, reweighted or draining); the owner on the ring with draining nodes also for
as long as a node is draining; and only nodes that still have a record in etcd (a node
whose lease has expired serves nothing). Once the ring has been still that long, this
node has owned its blocks all along: each lookup was a GET to another node answered
with 404, for every miss: about 15% of the nodes' CPU in a warmup
(``loadtest/results/warmup.md``). The current primary owner is asked whatever the ring's
age: when this node is not it, the block is a hot block's replica or a hedged read, and
the primary has the block or is fetching it.

Lookups that cannot help are skipped: a node that holds no block stored under an earlier
ring says so in its 404 (:data:`STORED_UNDER_HEADER`: the fingerprint of the ring every
block it holds was stored under, sent only while that is its current ring, and only if
it held nothing when its ring last changed). Such a node owned, under the ring this node
also sees, none of the blocks this node owns: nothing moved to this node from it. So
once a node has said that for the ring this node sees, it is not asked again as a
previous holder (the first three above) until the ring changes. Nodes that started
together, before any block was read, ask each other once each, not on every miss. A
scale-out or a drain still asks: the nodes that were there held blocks when the ring
changed, so they say nothing. The current primary is asked as before (it owns the
block under that ring). What such a 404 cannot promise is a block stored by a node
that did not own it (a hedged read's second owner, a client's stale ring): that block
comes from the origin, as it does outside the window. The header is a hint that only
ever sends a miss to the origin, which a plain 404 does too: it needs no proof.

On a secured cluster both sides prove they hold the cluster secret: the lookup is signed
with it (for that node only), and the answer must carry the node's proof over the bytes
sent (:data:`clientlib.auth.PROOF_HEADER`). Bytes without a valid proof are dropped, so a
record in etcd pointing at a server of someone else's never puts its bytes in the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable

import aiohttp
import xxhash

from cachenode.metrics import HANDOFF_WINDOW, HANDOFFS
from clientlib.auth import PROOF_HEADER, Credentials, body_digest
from clientlib.cluster import NodeInfo
from clientlib.ring import Ring, RingWatcher
from clientlib.tls import client_context

__all__ = ["DEFAULT_WINDOW", "STORED_UNDER_HEADER", "Handoff", "ring_key"]

log = logging.getLogger(__name__)

#: Seconds after a join or a ring change during which misses ask previous owners. A
#: moved block is worth asking for only until clients have read it once through its new
#: owner, which the jobs running at a scale-out do within minutes. Ten minutes covers
#: such a burst, and a warmup of a few hundred GiB at the ~1 GB/s a few nodes take in;
#: blocks first read later come from the origin, as any miss does.
DEFAULT_WINDOW = 600.0
#: In a 404 to a lookup: the ring every block the node holds was stored under (see the
#: module docstring).
STORED_UNDER_HEADER = "X-Ringcache-Stored-Under"


def ring_key(ring: Ring) -> str:
    """A fingerprint of what places blocks on ``ring``: its nodes, weights and states."""
    members = sorted(f"{n.id}/{n.weight!r}/{n.state}" for n in ring.nodes.values())
    return xxhash.xxh3_64_hexdigest("\n".join(members).encode())


class Handoff:
    """Finds a block on its likely previous holders; see the module docstring."""

    def __init__(
        self,
        watcher: RingWatcher,
        self_id: str,
        credentials: Credentials | None = None,
        timeout: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        answer_timeout: float = 1.0,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self._ssl = ssl_context
        self._watcher = watcher
        self._credentials = credentials or Credentials()
        self._self_id = self_id
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(1.0, timeout))
        self._answer_timeout = answer_timeout
        self._session: aiohttp.ClientSession | None = None
        self._seen: Ring | None = None
        self._previous = Ring()
        self._without_self = Ring()
        self._with_draining = Ring()
        self._window = window
        #: When (time.monotonic) previous owners stop being asked; see the docstring.
        self._window_ends = -math.inf
        self._draining = False
        self._follower: asyncio.Task[None] | None = None
        #: The fingerprint of the ring seen (:func:`ring_key`).
        self._seen_key = ""
        #: Whether this node holds or is storing any block (:meth:`track_holdings`).
        self._holds_blocks: Callable[[], bool] = lambda: True
        #: The ring every block held here was stored under (its key), if there is one.
        self._stored_under: str | None = None
        #: Nodes that said they hold no block stored under an earlier ring than the one
        #: seen (:data:`STORED_UNDER_HEADER`): not asked as previous holders.
        self._barren: set[str] = set()

    def track_holdings(self, holds_blocks: Callable[[], bool]) -> None:
        """Use ``holds_blocks`` (whether the node holds, or is storing, any block) for
        what this node's 404s say (:meth:`lookup_headers`); until this is called they
        say nothing."""
        self._holds_blocks = holds_blocks

    def lookup_headers(self) -> dict[str, str]:
        """The headers of this node's 404 to a lookup (see the module docstring)."""
        if self._stored_under is None or self._watcher.ring is not self._seen:
            return {}
        return {STORED_UNDER_HEADER: self._stored_under}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(ssl=self._ssl or client_context(None)),
        )
        await self._watcher.start()
        await self._derive()
        self._stored_under = None if self._holds_blocks() else self._seen_key
        self._open_window("joined")
        HANDOFF_WINDOW.set_function(self.window_left)
        self._follower = asyncio.create_task(self._follow(), name="handoff-rings")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self._watcher.close()
        if self._session is not None:
            await self._session.close()

    async def _follow(self) -> None:
        """Rebuild the derived rings whenever the watcher's ring changes (checked at least
        every second, in case a change slipped in before the wait began)."""
        while True:
            await self._watcher.wait_changed(1.0)
            await self._derive()

    async def _derive(self) -> None:
        """Build the rings without this node and with the draining ones, off the event
        loop: at 1000 nodes each takes about 0.3 s, which a miss must not wait for."""
        current = self._watcher.ring
        if current is self._seen:
            return
        without_self, with_draining = await asyncio.to_thread(
            lambda: (
                current.without(self._self_id),
                Ring(current.nodes.values(), with_draining=True),
            )
        )
        key = ring_key(current)
        if self._seen is not None:
            self._previous = self._seen
            self._open_window("ring changed")
            clean = self._stored_under is not None and not self._holds_blocks()
            self._stored_under = key if clean else None
        self._barren.clear()
        self._seen_key = key
        self._seen = current
        self._without_self = without_self
        self._with_draining = with_draining
        self._draining = any(n.state == "draining" for n in current.nodes.values())

    def _open_window(self, why: str) -> None:
        self._window_ends = time.monotonic() + self._window
        if self._window > 0:
            log.info("%s: misses ask previous owners for the next %.0fs", why, self._window)

    def window_left(self) -> float:
        """Seconds left in which misses ask the blocks' previous owners (0: steady state)."""
        if self._watcher.ring is not self._seen:  # a change not derived yet: still open
            return self._window
        return max(0.0, self._window_ends - time.monotonic())

    def _rings(self) -> list[Ring]:
        """The rings whose owners may hold a block this node misses (see the docstring)."""
        current = self._watcher.ring
        if self.window_left() > 0:
            return [self._without_self, self._with_draining, self._previous, current]
        if self._draining:
            return [self._with_draining, current]
        return [current]

    def sources(self, block_id: str) -> list[NodeInfo]:
        """Distinct other live nodes that may hold ``block_id``, most likely first."""
        current = self._watcher.ring
        alive = current.nodes
        seen = {self._self_id}
        out: list[NodeInfo] = []
        for ring in self._rings():
            for node in ring.owners(block_id, 1):
                barren = ring is not current and node.id in self._barren
                if node.id not in seen and node.id in alive and not barren:
                    seen.add(node.id)
                    out.append(node)
        return out

    async def fetch(self, block_id: str, length: int) -> bytes | None:
        """The block from another node that has it cached, or ``None``."""
        sources = self.sources(block_id) if self._session is not None else []
        if not sources:
            return None  # nobody else can have it: not a handoff, not counted
        for node in sources:
            try:
                path = f"/v1/blocks/{block_id}"
                headers = self._credentials.headers("GET", path, node=node.id)
                # A live node answers at once (hit, 404, or headers while it finishes
                # its own fetch); one that does not within `answer_timeout` is hung.
                resp = await asyncio.wait_for(
                    self._session.get(node.url + path, headers=headers), self._answer_timeout
                )
                async with resp:
                    if resp.status == 200:
                        data = await resp.read()
                        if len(data) == length and await self._proven(node, headers, resp, data):
                            HANDOFFS.labels("hit").inc()
                            log.debug("block %s handed off from node %s", block_id, node.id)
                            return data
                    elif resp.headers.get(STORED_UNDER_HEADER) == self._seen_key:
                        self._barren.add(node.id)
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("handoff lookup of %s on node %s failed: %r", block_id, node.id, exc)
        HANDOFFS.labels("miss").inc()
        return None

    async def _proven(
        self,
        node: NodeInfo,
        headers: dict[str, str],
        resp: aiohttp.ClientResponse,
        data: bytes,
    ) -> bool:
        """Whether ``node`` proved that it holds the cluster secret and sent ``data``
        (always true on a cluster without a secret, where there is nothing to prove)."""
        if not self._credentials.signing:
            return True
        digest = await asyncio.to_thread(body_digest, data)
        if self._credentials.check_proof(headers, digest, resp.headers.get(PROOF_HEADER)):
            return True
        HANDOFFS.labels("unproven").inc()
        log.warning(
            "node %s (%s) answered block lookups without proving the cluster secret: "
            "its bytes are dropped; is its etcd record genuine?",
            node.id,
            node.addr,
        )
        return False
