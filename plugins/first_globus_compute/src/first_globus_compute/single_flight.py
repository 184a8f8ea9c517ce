"""A bounded cache whose entries each expire at their own time, and whose concurrent misses for
one key share a single load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

from cachetools import TLRUCache

__all__ = ["SingleFlightCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Entry(NamedTuple, Generic[V]):
    value: V
    expires_at: float


class SingleFlightCache(Generic[K, V]):
    """``await cache.get(key, load)``: the cached value, or the one load in flight for ``key``.

    ``load()`` returns ``(value, expires_at)`` (a ``timer()`` time; the past means "do not
    keep it"). A load that raises caches nothing: every caller waiting on it gets the
    exception, and the next call loads again. A caller that goes away does not cancel the
    load the others are waiting on.
    """

    def __init__(self, maxsize: int, *, timer: Callable[[], float] = time.time) -> None:
        self._entries: TLRUCache[K, _Entry[V]] = TLRUCache(
            maxsize, ttu=lambda _key, entry, _now: entry.expires_at, timer=timer)
        self._timer = timer
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            return entry.value
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load))
            # Read the outcome even if every waiter has gone, so no error goes unreported.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: K, load: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        try:
            value, expires_at = await load()
        finally:
            self._loading.pop(key, None)
        if expires_at > self._timer():
            self._entries[key] = _Entry(value, expires_at)
        return value

    async def aclose(self) -> None:
        """Cancel the loads still in flight and forget every entry."""
        tasks = list(self._loading.values())
        self._loading.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
