"""Single-flight: one run of a job per key, however many callers ask for it at once.

Every tier of ringcache has the same need: ten readers of one block must cause one fetch
(the client from its owners, a node from the origin, a mount from its client, the store
from its disk). :class:`SingleFlight` runs the first caller's job as its own task and
hands every caller, the first included, the same result; the job is not cancelled when
a caller gives up (the others, and the cache, still want it), and the key is free again
the moment the job ends, so a later caller starts a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

log = logging.getLogger(__name__)

K = TypeVar("K")
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Jobs in flight by key; see the module docstring."""

    def __init__(self, name: str = "flight") -> None:
        self._name = name
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, key: K) -> asyncio.Task[T] | None:
        """The job in flight for ``key``, if any (to join it, or to tell it is there)."""
        return self._tasks.get(key)

    def start(self, key: K, job: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """The job in flight for ``key``, started from ``job`` if there is none."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(job())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        return task

    async def run(self, key: K, job: Callable[[], Awaitable[T]]) -> T:
        """The result of the one job for ``key`` (joining the one in flight, if any).

        A caller that is cancelled stops waiting; the job goes on for the others.
        """
        return await asyncio.shield(self.start(key, job))

    def cancel_all(self) -> None:
        """Cancel every job in flight (the owner is closing)."""
        for task in list(self._tasks.values()):
            task.cancel()

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            # Its callers got the error already; retrieving it here keeps asyncio quiet
            # when every caller had given up.
            log.debug("%s %r failed: %r", self._name, key, task.exception())
