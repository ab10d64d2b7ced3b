"""The FUSE operations' edge as a unit: errnos, and the op timeout kept by one timer."""

from __future__ import annotations

import asyncio
import errno
from types import SimpleNamespace

import pyfuse3
import pytest

from mountd.operation import Deadlines, operation


class FS:
    """What :func:`operation` needs of a file system: its op timeout and deadlines."""

    def __init__(self, op_timeout: float) -> None:
        self.config = SimpleNamespace(op_timeout=op_timeout)
        self.deadlines = Deadlines()

    @operation()
    async def hang(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @operation()
    async def outer(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return await self.hang(seconds)  # an operation inside another

    @operation()
    async def fail(self, exc: BaseException) -> None:
        raise exc


async def test_a_late_operation_is_eio_and_the_task_goes_on() -> None:
    fs = FS(0.3)
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await fs.hang(30)
    assert caught.value.errno == errno.EIO
    # The same task carries on: nothing of the timeout is left to cancel it later.
    assert await fs.hang(0.1) == "done"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_inner_operation_runs_under_the_outer_deadline() -> None:
    fs = FS(0.5)
    # 0.3 s each: the inner one alone is in time, the two together are not.
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await fs.outer(0.3)
    assert caught.value.errno == errno.EIO


async def test_a_cancellation_from_outside_is_not_taken_for_a_timeout() -> None:
    fs = FS(30)
    task = asyncio.create_task(fs.hang(30))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_failures_become_their_errnos() -> None:
    fs = FS(30)
    for exc, code in (
        (FileNotFoundError(errno.ENOENT, "x"), errno.ENOENT),
        (TimeoutError(), errno.EIO),
        (ValueError("unexpected"), errno.EIO),
    ):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.fail(exc)
        assert caught.value.errno == code
