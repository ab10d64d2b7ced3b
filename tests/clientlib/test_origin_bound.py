"""The client's direct-origin fallback is bounded (a unit: the client over a counting origin)."""

from __future__ import annotations

import asyncio

from clientlib import CacheClient
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.origin import Origins
from clientlib.origin.local import FileOrigin


class CountingOrigin(FileOrigin):
    """A real file origin that records how many reads it had in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0

    async def read(self, url: str, offset: int, length: int, version: str) -> bytes:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.05)
            return await super().read(url, offset, length, version)
        finally:
            self.now -= 1


async def test_cache_outage_does_not_become_an_origin_stampede(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * (12 * BS // 256)
    path.write_bytes(data)
    counting = CountingOrigin()
    origins = Origins(file=counting)
    async with CacheClient(None, origins=origins, origin_max_inflight=3, parallelism=16) as c:
        assert await c.read(f"file://{path}") == data
    assert counting.peak == 3
