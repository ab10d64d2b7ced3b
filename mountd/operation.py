"""The edge where a FUSE operation's failures become errnos.

pyfuse3 stops its main loop on any exception but ``FUSEError``, so every operation of
:class:`mountd.fs.RingcacheFS` is wrapped by :func:`operation`: ringcache's own errors
carry their errno (``RingcacheError.errno``), ``OSError`` keeps its own, a timeout or
anything unexpected is ``EIO``, and nothing waits forever (``op_timeout``).

The timeout is kept by :class:`Deadlines`, one per file system: an operation notes its
task and deadline in a dict, and one timer, a few times a second, cancels the tasks past
theirs. A read served from memory or the page cache thus costs no timer of its own
(``asyncio.timeout`` sets and cancels one per call, which cost a read from the local
tier a fifth of its rate); a timeout fires up to :data:`CHECK_EVERY` late.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pyfuse3

from clientlib.errors import RingcacheError

__all__ = ["CHECK_EVERY", "Deadlines", "errno_of", "operation"]

log = logging.getLogger("mountd.fs")

T = TypeVar("T")

#: Seconds between two looks for operations past their deadline.
CHECK_EVERY = 0.1


class Deadlines:
    """The deadlines of the operations in flight, by task, and the timer that cancels
    the tasks past theirs. An operation inside another (same task) runs under the outer
    one's deadline."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, task: asyncio.Task[Any], seconds: float) -> bool:
        """Note ``task``'s deadline; False if it has one already (an inner operation)."""
        if task in self._due:
            return False
        loop = task.get_loop()
        self._due[task] = loop.time() + seconds
        if self._timer is None:
            self._timer = loop.call_later(CHECK_EVERY, self._check, loop)
        return True

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``'s deadline; whether the timer cancelled it for being late."""
        del self._due[task]
        if task in self.expired:
            self.expired.discard(task)
            task.uncancel()
            return True
        return False

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, due in self._due.items():
            if due <= now and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        self._timer = loop.call_later(CHECK_EVERY, self._check, loop) if self._due else None


class _Timed(Protocol):
    @property
    def config(self) -> Any: ...  # a MountConfig: its op_timeout

    @property
    def deadlines(self) -> Deadlines: ...


def errno_of(exc: BaseException) -> int:
    """The errno a failure leaves the mount with."""
    if isinstance(exc, RingcacheError):
        return int(exc.errno)
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    return errno.EIO


def operation(
    timed: bool = True,
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Turn every failure of a FUSE operation into a FUSEError with the right errno;
    ``timed`` operations fail with EIO after ``op_timeout`` seconds."""

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: _Timed, *args: Any) -> T:
            task = asyncio.current_task() if timed else None
            if task is not None and not self.deadlines.enter(task, self.config.op_timeout):
                task = None  # inside another operation, under its deadline
            try:
                return await fn(self, *args)
            except pyfuse3.FUSEError:
                raise
            except asyncio.CancelledError:
                late = task is not None and self.deadlines.leave(task)
                task = None
                if not late:
                    raise
                log.error("%s%r timed out after %ss", fn.__name__, args[:2], self.config.op_timeout)
                raise pyfuse3.FUSEError(errno.EIO) from None
            except TimeoutError:  # a timeout of its own (rename's lookups)
                log.error("%s%r timed out after %ss", fn.__name__, args[:2], self.config.op_timeout)
                raise pyfuse3.FUSEError(errno.EIO) from None
            except (RingcacheError, OSError) as exc:
                code = errno_of(exc)
                level = logging.DEBUG if code == errno.ENOENT else logging.WARNING
                log.log(level, "%s%r failed: %s", fn.__name__, args[:2], exc)
                raise pyfuse3.FUSEError(code) from None
            except Exception:
                log.exception("%s%r failed unexpectedly", fn.__name__, args[:2])
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                if task is not None:
                    self.deadlines.leave(task)

        return wrapper

    return wrap
