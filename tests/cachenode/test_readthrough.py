"""The node's miss path (:class:`cachenode.readthrough.ReadThrough`) over a real store and
a real file origin: a client gets a block's bytes before they are on disk, and the
block stays one fetch until it is."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from cachenode.cachedir import CacheDirSpec
from cachenode.readthrough import ReadThrough
from cachenode.shield import OriginShield
from cachenode.store import BlockStore
from clientlib import blockfile
from clientlib.blocks import block_refs
from clientlib.origin import Origins

BS = 1024 * 1024


async def test_a_miss_is_answered_before_its_block_is_written_and_joined_until_it_is(
    tmp_path: Path, monkeypatch
):
    root = tmp_path / "data"
    root.mkdir()
    body = os.urandom(2 * BS + 123)
    (root / "obj.bin").write_bytes(body)
    origins = Origins(file_roots=[root])
    reads = []
    origin = await origins.get(f"file://{root}/obj.bin")
    read_into = type(origin).read_into

    async def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(args[1])
        return await read_into(self, *args, **kwargs)

    monkeypatch.setattr(type(origin), "read_into", counted)
    # The block file's write waits until the test lets it go (the one function held).
    release = threading.Event()
    write_block = blockfile.write_block

    def held(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert release.wait(10)
        return write_block(*args, **kwargs)

    monkeypatch.setattr(blockfile, "write_block", held)
    store = BlockStore([CacheDirSpec(tmp_path / "cache", 64 * BS)])
    store.open()
    try:
        readthrough = ReadThrough(store, origins, OriginShield("n1", 4))
        info = await origin.stat(f"file://{root}/obj.bin")
        ref = next(block_refs(info.url, "file://", info.key, info.version, info.size, BS))
        block_id = ref.id

        data = await asyncio.wait_for(readthrough.fetch(ref, block_id), 5)
        assert data == body[:BS]
        assert block_id not in store  # answered before the write is done...
        assert readthrough.fetching(block_id)  # ...which keeps the fetch in flight
        again = await asyncio.wait_for(readthrough.fetch(ref, block_id), 5)
        assert again == body[:BS] and reads == [0]  # joined: one origin read

        release.set()
        while readthrough.fetching(block_id):
            await asyncio.sleep(0.01)
        assert block_id in store
        assert await readthrough.get(ref, block_id) == (body[:BS], True)
        assert reads == [0]
    finally:
        release.set()
        store.close()
