"""A shared store for several gateway instances: PostgreSQL through asyncpg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..requestlog import COLUMNS, RequestRecord
from .base import RequestQuery
from .schema import COLUMN_LIST, MIGRATIONS, select_requests

__all__ = ["PostgresStore"]

_INSERT = (f"INSERT INTO requests ({COLUMN_LIST}) "
           f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))})")
# Any fixed number: instances that start together take turns migrating.
_MIGRATION_LOCK = 0x66697273


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise RuntimeError(
                "the postgresql store needs asyncpg: pip install 'first-proxy[postgres]'"
            ) from None
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS first_proxy_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM first_proxy_schema") or 0
            for i, sql in enumerate(MIGRATIONS[version:], start=version):
                await conn.execute(sql.format(real="DOUBLE PRECISION",
                                              autoid="BIGSERIAL PRIMARY KEY"))
                await conn.execute("INSERT INTO first_proxy_schema VALUES ($1)", i + 1)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        async with self._require().acquire() as conn:
            await conn.executemany(_INSERT, [tuple(getattr(r, c) for c in COLUMNS) for r in rows])

    async def recent_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self.find_requests(RequestQuery(limit=limit))

    async def find_requests(self, query: RequestQuery) -> list[dict[str, Any]]:
        sql, values = select_requests(query, lambda n: f"${n}")
        async with self._require().acquire() as conn:
            rows = await conn.fetch(sql, *values)
        return [dict(row) for row in rows]
