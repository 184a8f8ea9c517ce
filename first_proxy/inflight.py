"""The requests being answered now: the deadline each one is held to, and ending them at shutdown.

Deadlines are kept by one sweep every :data:`TICK` seconds rather than by a timer per
request. Per request that is one dictionary entry, set and removed, where a timer would be a
handle pushed onto the event loop's heap and cancelled out of it again; a deadline is met to
within a tick. A request past its deadline, like one still running when shutdown's grace is
over, is cancelled with a message saying why, which the request path recognises with
:func:`absorb` and turns into an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

__all__ = ["EXPIRED", "SHUTTING_DOWN", "TICK", "InFlight", "absorb"]

#: How often deadlines are checked, in seconds.
TICK = 0.05
#: The message of the cancellation that ends a wait past its deadline.
EXPIRED = "first_proxy: deadline passed"
#: The message of the cancellation that ends a request still running when shutdown's grace ends.
SHUTTING_DOWN = "first_proxy: shutting down"

Task = asyncio.Task[Any]


class InFlight:
    """The tasks answering inference requests, and the deadline some of them are waiting on."""

    def __init__(self) -> None:
        self._tasks: set[Task] = set()
        self._due: dict[Task, float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: Task) -> None:
        self._tasks.add(task)

    def discard(self, task: Task) -> None:
        self._tasks.discard(task)
        self._due.pop(task, None)

    def expire_in(self, task: Task, seconds: float) -> None:
        """Cancel ``task`` with :data:`EXPIRED` once ``seconds`` have passed, unless
        :meth:`clear` comes first. A later call replaces the deadline."""
        self._due[task] = time.monotonic() + seconds

    def clear(self, task: Task) -> None:
        """``task`` is no longer waiting on a deadline."""
        self._due.pop(task, None)

    def cancel_all(self, message: str) -> None:
        """Cancel every request in flight with ``message``."""
        for task in list(self._tasks):
            task.cancel(message)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="first-proxy-deadlines")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if not self._due:
                continue
            now = time.monotonic()
            for task in [task for task, due in self._due.items() if due <= now]:
                del self._due[task]
                task.cancel(EXPIRED)


def absorb(cancel: asyncio.CancelledError, reason: str) -> bool:
    """True if ``cancel`` was sent for ``reason`` (:data:`EXPIRED`, :data:`SHUTTING_DOWN`) and
    for nothing else: the cancellation is then taken back and the task carries on, to answer.
    A cancellation that is not ours, or that came together with another one (the caller
    went away too), is left to propagate."""
    if cancel.args[:1] != (reason,):
        return False
    task = asyncio.current_task()
    return task is None or task.uncancel() == 0
