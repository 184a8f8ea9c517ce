"""The schema, as ordered migrations shared by every SQL store."""

from __future__ import annotations

from ..requestlog import COLUMNS

__all__ = ["COLUMN_LIST", "MIGRATIONS"]

#: The request-log columns, quoted for SQL ("user" is a reserved word in PostgreSQL).
COLUMN_LIST = ", ".join(f'"{c}"' for c in COLUMNS)

#: Each entry brings the schema from version ``i`` to ``i + 1``. Append; never edit.
#: ``{real}`` and ``{autoid}`` are filled in per database.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id {autoid},
        ts {real} NOT NULL,
        request_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        "user" TEXT,
        model TEXT,
        target TEXT,
        status INTEGER NOT NULL,
        latency_ms {real} NOT NULL,
        ttft_ms {real},
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        stream BOOLEAN NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        prompt TEXT
    );
    CREATE INDEX requests_ts ON requests (ts);
    CREATE INDEX requests_user_ts ON requests ("user", ts);
    """,
)
