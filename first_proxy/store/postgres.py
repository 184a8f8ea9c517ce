"""A shared store for several gateway instances: PostgreSQL through asyncpg."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from ..types import RequestRecord
from .base import RequestQuery
from .schema import COLUMN_LIST, COLUMNS, MIGRATIONS, PLUGIN_VERSIONS, fill, select_requests

__all__ = ["PostgresStore"]

_INSERT = (f"INSERT INTO requests ({COLUMN_LIST}) "
           f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))})")
# Any fixed number: instances that start together take turns migrating.
_MIGRATION_LOCK = 0x66697273


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    async def open(self, plugin_migrations: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
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
                await conn.execute(_fill(sql))
                await conn.execute("INSERT INTO first_proxy_schema VALUES ($1)", i + 1)
            await conn.execute(PLUGIN_VERSIONS)
            for name, migrations in plugin_migrations:
                done = await conn.fetchval(
                    "SELECT version FROM first_proxy_migrations WHERE name = $1", name) or 0
                for i, sql in enumerate(migrations[done:], start=done):
                    await conn.execute(_fill(sql))
                    await conn.execute(
                        "INSERT INTO first_proxy_migrations VALUES ($1, $2) ON CONFLICT (name) "
                        "DO UPDATE SET version = $2", name, i + 1)

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
            await conn.executemany(_INSERT, [_values(r) for r in rows])

    async def recent_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self.find_requests(RequestQuery(limit=limit))

    async def find_requests(self, query: RequestQuery) -> list[dict[str, Any]]:
        sql, values = select_requests(query, lambda n: f"${n}")
        async with self._require().acquire() as conn:
            rows = await conn.fetch(sql, *values)
        return [{**row, "extra": orjson.loads(row["extra"]) if row["extra"] else None}
                for row in rows]

    async def execute(self, sql: str, *params: Any) -> int:
        async with self._require().acquire() as conn:
            status = await conn.execute(_numbered(sql), *params)
        # asyncpg answers with the command tag, e.g. "INSERT 0 1" or "UPDATE 3".
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with self._require().acquire() as conn:
            return [dict(row) for row in await conn.fetch(_numbered(sql), *params)]


def _values(row: RequestRecord) -> tuple[Any, ...]:
    return tuple(orjson.dumps(row.extra).decode() if c == "extra" and row.extra is not None
                 else getattr(row, c) for c in COLUMNS)


def _fill(sql: str) -> str:
    return fill(sql, real="DOUBLE PRECISION", autoid="BIGSERIAL PRIMARY KEY")


_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?")


def _numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (not in strings)."""
    numbers = iter(range(1, sql.count("?") + 1))
    return _PLACEHOLDER.sub(lambda m: m[0] if m[0] != "?" else f"${next(numbers)}", sql)
