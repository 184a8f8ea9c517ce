"""The embedded default store: one SQLite file through aiosqlite."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..requestlog import COLUMNS, RequestRecord
from .schema import COLUMN_LIST, MIGRATIONS

__all__ = ["SQLiteStore"]

_INSERT = f"INSERT INTO requests ({COLUMN_LIST}) VALUES ({', '.join('?' for _ in COLUMNS)})"


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._migrate()

    async def _migrate(self) -> None:
        db = self._require()
        version = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
        for i, sql in enumerate(MIGRATIONS[version:], start=version):
            await db.executescript(
                "BEGIN;" + sql.format(real="REAL", autoid="INTEGER PRIMARY KEY")
                + f"; PRAGMA user_version = {i + 1}; COMMIT;"
            )

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
        await db.executemany(_INSERT, [tuple(getattr(r, c) for c in COLUMNS) for r in rows])
        await db.commit()

    async def recent_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        db = self._require()
        cursor = await db.execute(
            f"SELECT {COLUMN_LIST} FROM requests "
            "ORDER BY ts DESC, id DESC LIMIT ?", (limit,))
        rows = await cursor.fetchall()
        return [{c: (bool(row[c]) if c == "stream" else row[c]) for c in COLUMNS} for row in rows]

