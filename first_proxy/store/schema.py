"""The schema, as ordered migrations shared by every SQL store."""

from __future__ import annotations

from dataclasses import fields

from ..types import RequestRecord

__all__ = ["COLUMNS", "COLUMN_LIST", "MIGRATIONS", "PLUGIN_VERSIONS", "fill"]

#: What the store keeps of a request record, in order: every field but its start time.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord) if f.name != "started")

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
    # Fields plugins add to a request's row (a batch id, an identity provider), as JSON.
    "ALTER TABLE requests ADD COLUMN extra TEXT;",
)

#: Where the version of each plugin's own tables is kept (``register_migrations``).
PLUGIN_VERSIONS = """
CREATE TABLE IF NOT EXISTS first_proxy_migrations (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""


def fill(sql: str, *, real: str, autoid: str) -> str:
    """A migration's SQL for one database: ``{real}`` and ``{autoid}`` filled in."""
    return sql.replace("{real}", real).replace("{autoid}", autoid)
