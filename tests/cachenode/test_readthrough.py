"""The node's miss path (:class:`cachenode.readthrough.ReadThrough`) over a real store and
a real file origin: a miss is answered only once its block is stored, every miss of a
block in flight shares its one origin read and its buffer, and a buffer is reused only
after every send from it is done."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cachenode.cachedir import CacheDirSpec
from cachenode.readthrough import ReadThrough
from cachenode.shield import OriginShield
from cachenode.store import BlockStore
from clientlib import blockfile
from clientlib.blocks import BlockRef, block_refs
from clientlib.origin import Origins

BS = 1024 * 1024


class Setup:
    """A store, a file origin of one object, and the read-through between them; the
    origin's reads are recorded and the store's block writes held until :attr:`write`
    is set."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        root = tmp_path / "data"
        root.mkdir()
        self.body = os.urandom(3 * BS + 123)
        (root / "obj.bin").write_bytes(self.body)
        self.url = f"file://{root}/obj.bin"
        self.origins = Origins(file_roots=[root])
        self.reads: list[int] = []
        self.write = threading.Event()
        self.store = BlockStore([CacheDirSpec(tmp_path / "cache", 64 * BS)])
        self._patch(monkeypatch)
        self.readthrough = ReadThrough(self.store, self.origins, OriginShield("n1", 4))
        self.refs: list[BlockRef] = []

    def _patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        write = self.write
        finish = blockfile.StreamedBlockWrite.finish

        def held(streamed: blockfile.StreamedBlockWrite, final_path: str) -> None:
            assert write.wait(10)
            finish(streamed, final_path)

        monkeypatch.setattr(blockfile.StreamedBlockWrite, "finish", held)
        self._monkeypatch = monkeypatch

    async def start(self) -> None:
        origin = await self.origins.get(self.url)
        read_into = type(origin).read_into
        reads = self.reads

        async def counted(self: Any, *args: Any, **kwargs: Any) -> None:
            reads.append(args[1])
            await read_into(self, *args, **kwargs)

        self._monkeypatch.setattr(type(origin), "read_into", counted)
        self.store.open()
        info = await origin.stat(self.url)
        self.refs = list(block_refs(info.url, "file://", info.key, info.version, info.size, BS))


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    s = Setup(tmp_path, monkeypatch)
    await s.start()
    try:
        yield s
    finally:
        s.write.set()
        s.store.close()


async def test_a_miss_is_answered_only_once_its_block_is_stored_and_shares_one_read(
    setup: Setup,
) -> None:
    rt, ref = setup.readthrough, setup.refs[0]
    got: list[bytes] = []
    stored_when_answered: list[bool] = []

    async def miss() -> None:
        async with rt.missed(ref, ref.id) as data:
            stored_when_answered.append(ref.id in setup.store)
            got.append(bytes(data))

    first = asyncio.create_task(miss())
    while not setup.reads:  # the origin read has started
        await asyncio.sleep(0.01)
    second = asyncio.create_task(miss())
    await asyncio.sleep(0.3)
    assert not first.done() and not second.done()  # the write is held: nobody answered
    setup.write.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert got == [setup.body[:BS]] * 2
    assert stored_when_answered == [True, True]
    assert setup.reads == [0]  # one origin read for both
    assert await rt.cached(ref.id) == setup.body[:BS]  # a hit right after


async def test_a_buffer_is_reused_only_after_every_send_from_it(setup: Setup) -> None:
    setup.write.set()
    rt = setup.readthrough
    first, second, third = setup.refs[:3]
    async with rt.missed(first, first.id) as data:
        # Another miss while this one's bytes are still being sent: it gets a buffer
        # of its own, and this one's bytes stay the block's.
        async with rt.missed(second, second.id) as other:
            assert bytes(other) == setup.body[BS : 2 * BS]
        assert bytes(data) == setup.body[:BS]
    async with rt.missed(third, third.id) as data:
        assert bytes(data) == setup.body[2 * BS : 3 * BS]
    assert setup.reads == [0, BS, 2 * BS]


async def test_a_send_cut_short_keeps_its_buffer_out_of_the_pool(setup: Setup) -> None:
    setup.write.set()
    rt = setup.readthrough
    first, second = setup.refs[:2]
    kept: list[memoryview | bytes] = []
    with pytest.raises(ConnectionResetError):
        async with rt.missed(first, first.id) as data:
            kept.append(data)  # as a transport would keep what it has not sent
            raise ConnectionResetError("client gone")
    async with rt.missed(second, second.id) as other:
        assert bytes(other) == setup.body[BS : 2 * BS]
    assert bytes(kept[0]) == setup.body[:BS]  # not overwritten by the next block
