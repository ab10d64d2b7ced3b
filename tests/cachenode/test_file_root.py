"""A real node's ``--file-root``: it serves files beneath the root and nothing else.

The nodes here run without ``--token-file``, so every request is all-access: the strongest
caller there is, with only the root between it and a file elsewhere on the node.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from yarl import URL

from clientlib.blocks import DEFAULT_BLOCK_SIZE, BlockRef

SECRET = b"TOP-SECRET-PRICES:" * 4096
MARK = b"TOP-SECRET-PRICES"

# Flips each link between its two targets as fast as it can (a symlink made beside it,
# then renamed over it, so the link always exists) until killed.
FLIPPER = """
import os, sys
pairs = [(sys.argv[i], sys.argv[i + 1], sys.argv[i + 2]) for i in range(1, len(sys.argv), 3)]
n = 0
while True:
    for link, a, b in pairs:
        tmp = f"{link}.{n % 2}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(a if n % 2 else b, tmp)
        os.replace(tmp, link)
    n += 1
"""


def version(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def ref(path: Path, ver: str, size: int) -> BlockRef:
    return BlockRef(f"file://{path}", "file://", str(path), ver, size, DEFAULT_BLOCK_SIZE, 0)


async def get(session: aiohttp.ClientSession, node, block: BlockRef) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """Status and body of a block request; an aborted body is status 0."""
    query = urlencode(
        {"src": block.url, "ver": block.version, "size": block.size, "bs": block.block_size, "i": 0}
    )
    target = URL(f"{node.url}/v1/blocks/{block.id}?{query}", encoded=True)
    try:
        async with session.get(target, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.read()
    except aiohttp.ClientPayloadError:
        return 0, b""


@pytest.fixture
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file outside every node's root (the roots are each test's ``tmp_path``)."""
    path = tmp_path_factory.mktemp("outside") / "secret.bin"
    path.write_bytes(SECRET)
    return path


async def test_symlink_flipped_out_of_the_root_never_leaks(make_cluster, tmp_path, secret_file):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    root = cluster.root
    inside = root / "inside.bin"
    inside.write_bytes(b"i" * len(SECRET))
    (root / "real").mkdir()
    (root / "real" / "secret.bin").write_bytes(b"r" * len(SECRET))
    # The requests name the secret's version: only the secret's bytes could ever match.
    asked = [
        ref(root / "flip.bin", version(secret_file), len(SECRET)),
        ref(root / "flipdir" / "secret.bin", version(secret_file), len(SECRET)),
    ]
    flipper = subprocess.Popen(
        [sys.executable, "-c", FLIPPER,
         str(root / "flip.bin"), str(inside), str(secret_file),
         str(root / "flipdir"), str(root / "real"), str(secret_file.parent)],
    )  # fmt: skip
    statuses: dict[int, int] = {}
    leaks = 0
    try:
        async with aiohttp.ClientSession() as session:

            async def ask(n: int) -> None:
                nonlocal leaks
                for i in range(n):
                    status, body = await get(session, node, asked[i % 2])
                    statuses[status] = statuses.get(status, 0) + 1
                    leaks += MARK in body

            await asyncio.gather(*(ask(200) for _ in range(8)))
            assert flipper.poll() is None, "the flipper stopped"
    finally:
        flipper.kill()
        flipper.wait()
    assert leaks == 0, f"{leaks} responses held the secret ({statuses})"
    # A symlink is refused before the node answers, with a clean 404.
    assert statuses == {404: 1600}

    # The node still serves what is beneath its root.
    async with aiohttp.ClientSession() as session:
        status, body = await get(session, node, ref(inside, version(inside), len(SECRET)))
    assert (status, body) == (200, b"i" * len(SECRET))
    assert node.alive()


async def test_directory_or_fifo_as_source_is_a_clean_404(make_cluster, tmp_path):
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    root = cluster.root
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    (root / "ok.bin").write_bytes(b"ok" * 1000)
    async with aiohttp.ClientSession() as session:
        for name in ("dir", "fifo"):
            path = root / name
            st = path.stat()
            # The version a caller can see of it, and any size: neither makes it an object.
            block = ref(path, version(path), max(st.st_size, 1))
            # A FIFO opened blocking would hang the request into get()'s timeout (raises).
            status, body = await get(session, node, block)
            assert status == 404, (name, status, body[:200])
            assert b"regular file" in body
        ok = root / "ok.bin"
        status, body = await get(session, node, ref(ok, version(ok), 2000))
        assert (status, body) == (200, b"ok" * 1000)
    assert node.alive()
