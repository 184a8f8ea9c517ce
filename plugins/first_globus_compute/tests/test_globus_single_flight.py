"""The cache behind token introspection: per-entry expiry, one load per key in flight, nothing
kept of a failure, and a load that outlives the caller who started it."""

from __future__ import annotations

import asyncio

import pytest
from first_globus_compute.single_flight import SingleFlightCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A load function that counts its calls and answers when released."""

    def __init__(self, value: str, expires_at: float) -> None:
        self.value, self.expires_at = value, expires_at
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.error: Exception | None = None

    async def __call__(self) -> tuple[str, float]:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value, self.expires_at


async def test_an_entry_is_kept_until_its_own_expiry() -> None:
    clock = Clock()
    cache: SingleFlightCache[str, str] = SingleFlightCache(10, timer=clock)
    soon, later = Loads("soon", clock.now + 5), Loads("later", clock.now + 50)
    assert await cache.get("a", soon) == "soon"
    assert await cache.get("b", later) == "later"
    clock.now += 10
    assert await cache.get("a", soon) == "soon"
    assert await cache.get("b", later) == "later"
    assert (soon.calls, later.calls) == (2, 1)


async def test_a_value_already_expired_is_not_kept() -> None:
    clock = Clock()
    cache: SingleFlightCache[str, str] = SingleFlightCache(10, timer=clock)
    stale = Loads("stale", clock.now)
    await cache.get("a", stale)
    await cache.get("a", stale)
    assert stale.calls == 2


async def test_concurrent_misses_share_one_load_and_a_failure_is_not_kept() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(10, timer=Clock())
    load = Loads("v", 2000.0)
    load.release.clear()
    load.error = RuntimeError("unreachable")
    waiting = [asyncio.create_task(cache.get("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    load.release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(o) for o in outcomes] == [RuntimeError] * 5 and load.calls == 1
    load.error = None
    assert await cache.get("k", load) == "v" and load.calls == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others_load() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(10, timer=Clock())
    load = Loads("v", 2000.0)
    load.release.clear()
    first = asyncio.create_task(cache.get("k", load))
    second = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    load.release.set()
    assert await second == "v" and load.calls == 1


async def test_the_cache_holds_at_most_maxsize_entries() -> None:
    cache: SingleFlightCache[int, str] = SingleFlightCache(2, timer=Clock())
    loads = [Loads(str(i), 2000.0) for i in range(3)]
    for i, load in enumerate(loads):
        await cache.get(i, load)
    for i, load in enumerate(loads):
        await cache.get(i, load)
    assert sum(load.calls for load in loads) > len(loads)
