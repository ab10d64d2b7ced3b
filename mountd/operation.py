"""The edge where a FUSE operation's failures become errnos.

pyfuse3 stops its main loop on any exception but ``FUSEError``, so every operation of
:class:`mountd.fs.RingcacheFS` is wrapped by :func:`operation`: ringcache's own errors
carry their errno (``RingcacheError.errno``), ``OSError`` keeps its own, a timeout or
anything unexpected is ``EIO``, and nothing waits forever (``op_timeout``).
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

__all__ = ["errno_of", "operation"]

log = logging.getLogger("mountd.fs")

T = TypeVar("T")


class _Timed(Protocol):
    @property
    def config(self) -> Any: ...  # a MountConfig: its op_timeout


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
            try:
                if timed:
                    async with asyncio.timeout(self.config.op_timeout):
                        return await fn(self, *args)
                return await fn(self, *args)
            except pyfuse3.FUSEError:
                raise
            except TimeoutError:
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

        return wrapper

    return wrap
