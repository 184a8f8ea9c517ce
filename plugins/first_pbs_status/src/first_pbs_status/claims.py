"""Who is starting which model where: one holder per claim at a time, until its time runs out.

A cold start takes a claim on ``cluster/model`` before it submits a job, so that of all the
gateway processes sharing a store, one submits. :class:`StoreClaims` keeps the claims in the
gateway's store (SQLite or PostgreSQL), one row each, taken in one atomic statement;
:class:`MemoryClaims` keeps them in this process, for one gateway alone and for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from first_proxy.store import Store

__all__ = ["MIGRATIONS", "Claims", "MemoryClaims", "StoreClaims"]

#: The plugin's tables (``register_migrations``): append, never edit.
MIGRATIONS = (
    """
    CREATE TABLE first_pbs_status_claims (
        claim TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires {real} NOT NULL
    )
    """,
)


class Claims(Protocol):
    """One holder per key at a time, until ``ttl`` runs out."""

    async def claim(self, key: str, owner: str, ttl: float) -> bool:
        """Take ``key`` for ``owner`` for ``ttl`` seconds; False if another owner holds it."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Give ``key`` back, if ``owner`` holds it."""
        ...


class MemoryClaims:
    """:class:`Claims` within one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[str, tuple[str, float]] = {}
        self._clock = clock

    async def claim(self, key: str, owner: str, ttl: float) -> bool:
        now = self._clock()
        held = self._held.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._held[key] = (owner, now + ttl)
        return True

    async def release(self, key: str, owner: str) -> None:
        if self._held.get(key, ("",))[0] == owner:
            del self._held[key]


# Taken when free, expired, or held by the same owner already (which renews it); otherwise
# the row is left as it is and no row counts as changed. One statement: no two processes can
# both see the claim free.
_CLAIM = """
INSERT INTO first_pbs_status_claims (claim, owner, expires) VALUES (?, ?, ?)
ON CONFLICT (claim) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
WHERE first_pbs_status_claims.owner = excluded.owner
   OR first_pbs_status_claims.expires <= ?
"""
_RELEASE = "DELETE FROM first_pbs_status_claims WHERE claim = ? AND owner = ?"


class StoreClaims:
    """:class:`Claims` in the gateway's store, shared by every gateway process using it.

    Times are wall-clock UNIX times: the processes may run on different hosts.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def claim(self, key: str, owner: str, ttl: float) -> bool:
        now = self._clock()
        return await self._store.execute(_CLAIM, key, owner, now + ttl, now) == 1

    async def release(self, key: str, owner: str) -> None:
        await self._store.execute(_RELEASE, key, owner)
