"""The embedded default store: one SQLite file through aiosqlite."""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ..types import RequestRecord
from .base import RequestQuery
from .schema import COLUMN_LIST, COLUMNS, MIGRATIONS, PLUGIN_VERSIONS, fill, select_requests

__all__ = ["SQLiteStore"]

_ROW = f"({', '.join('?' for _ in COLUMNS)})"
#: Rows go in as statements of ``_CHUNK`` rows each, the rest one by one: every statement is
#: then prepared once and reused, where an INSERT sized to each batch would be compiled anew
#: for most batches. 50 rows keep under the 999 parameters older SQLite versions allow.
_CHUNK = 50
_INSERT_ONE = f"INSERT INTO requests ({COLUMN_LIST}) VALUES {_ROW}"
_INSERT_CHUNK = f"INSERT INTO requests ({COLUMN_LIST}) VALUES {', '.join([_ROW] * _CHUNK)}"
_values = operator.attrgetter(*COLUMNS)
_EXTRA = COLUMNS.index("extra")
_extra = operator.attrgetter("extra")

# sqlite3 binds None and bool only after looking for an adapter, and each failed lookup
# formats an AttributeError message: a quarter of the CPU time a typical row (three NULLs)
# costs. Registered adapters that hand back what they are given make the lookup succeed at
# once; the values stored are the same (NULL, and 0 or 1).
sqlite3.register_adapter(type(None), lambda value: value)
sqlite3.register_adapter(bool, int)


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self, plugin_migrations: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._migrate(plugin_migrations)

    async def _migrate(self, plugin_migrations: Sequence[tuple[str, Sequence[str]]]) -> None:
        db = self._require()
        version = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
        for i, sql in enumerate(MIGRATIONS[version:], start=version):
            await db.executescript(f"BEGIN;{_fill(sql)}; PRAGMA user_version = {i + 1}; COMMIT;")
        await db.execute(PLUGIN_VERSIONS)
        await db.commit()
        for name, migrations in plugin_migrations:
            row = await (await db.execute(
                "SELECT version FROM first_proxy_migrations WHERE name = ?", (name,))).fetchone()
            done = row[0] if row else 0
            for i, sql in enumerate(migrations[done:], start=done):
                await db.executescript(
                    f"BEGIN;{_fill(sql)};INSERT INTO first_proxy_migrations VALUES "
                    f"({_quote(name)}, {i + 1}) ON CONFLICT (name) DO UPDATE SET "
                    f"version = {i + 1}; COMMIT;")

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        db = self._require()
        values = list(map(_values, rows))
        if any(map(_extra, rows)):
            values = [(*v[:_EXTRA], orjson.dumps(v[_EXTRA]).decode() if v[_EXTRA] else None,
                       *v[_EXTRA + 1:]) for v in values]
        whole = len(values) - len(values) % _CHUNK
        if whole:
            await db.executemany(_INSERT_CHUNK, [tuple(chain.from_iterable(values[i : i + _CHUNK]))
                                                 for i in range(0, whole, _CHUNK)])
        if whole < len(values):
            await db.executemany(_INSERT_ONE, values[whole:])
        await db.commit()

    async def recent_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self.find_requests(RequestQuery(limit=limit))

    async def find_requests(self, query: RequestQuery) -> list[dict[str, Any]]:
        sql, values = select_requests(query, lambda n: "?")
        cursor = await self._require().execute(sql, values)
        rows = await cursor.fetchall()
        return [_record(row) for row in rows]

    async def execute(self, sql: str, *params: Any) -> int:
        db = self._require()
        cursor = await db.execute(sql, params)
        await db.commit()
        return cursor.rowcount

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        cursor = await self._require().execute(sql, params)
        return [dict(row) for row in await cursor.fetchall()]


def _record(row: aiosqlite.Row) -> dict[str, Any]:
    found = {c: row[c] for c in COLUMNS}
    found["stream"] = bool(found["stream"])
    found["extra"] = orjson.loads(found["extra"]) if found["extra"] else None
    return found


def _fill(sql: str) -> str:
    return fill(sql, real="REAL", autoid="INTEGER PRIMARY KEY")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

