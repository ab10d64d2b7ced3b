"""fusewait as a unit: one reader registration for the FUSE device while requests keep coming.

The mount tests read through real FUSE mounts, where a registration a request would only
cost CPU (about 10 us a request), which no test can see from outside. Here a pipe stands
in for the device and a worker loop waits on it the way pyfuse3's workers do: wait for
the fd to be readable, take one request, wait again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pyfuse3.asyncio
import pytest

from mountd import fusewait


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    fusewait.release()
    os.close(r)
    os.close(w)


async def test_a_stream_of_requests_registers_the_device_once(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 requests, each sent while the worker waits or while it handles the one
    before: the device's reader is added once and never removed meanwhile (pyfuse3's
    own wait adds and removes it for every request)."""
    r, w = pipe
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    add, remove = loop.add_reader, loop.remove_reader

    def counting_add(fd: int, callback: Any, *args: Any) -> None:
        calls.append("add")
        add(fd, callback, *args)

    def counting_remove(fd: int) -> bool:
        calls.append("remove")
        return remove(fd)

    monkeypatch.setattr(loop, "add_reader", counting_add)
    monkeypatch.setattr(loop, "remove_reader", counting_remove)
    served = 0
    for i in range(200):
        if i % 2:
            loop.call_soon(os.write, w, b"x")  # arrives while the worker waits
        else:
            os.write(w, b"x")  # already there when the worker asks
        await fusewait._wait_readable(r)
        assert os.read(r, 1) == b"x"
        served += 1
    assert served == 200
    assert calls == ["add"]


async def test_closing_ends_the_wait_and_a_new_device_registers_anew(
    pipe: tuple[int, int],
) -> None:
    """notify_closing (pyfuse3.terminate) ends a wait with ClosedResourceError and
    forgets the device; the next wait on that fd registers it again."""
    r, w = pipe
    waiting = asyncio.ensure_future(fusewait._wait_readable(r))
    await asyncio.sleep(0)
    fusewait._notify_closing(r)
    with pytest.raises(pyfuse3.asyncio.ClosedResourceError):
        await waiting
    os.write(w, b"x")
    await asyncio.wait_for(fusewait._wait_readable(r), 5)
