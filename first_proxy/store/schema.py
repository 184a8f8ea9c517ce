"""The schema, as ordered migrations shared by every SQL store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ..types import RequestRecord
from .base import RequestQuery

__all__ = ["COLUMNS", "COLUMN_LIST", "MIGRATIONS", "PLUGIN_VERSIONS", "fill", "select_requests"]

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
    # `first-proxy requests --id`: the id a caller quotes from X-Request-Id.
    """
    CREATE INDEX requests_request_id ON requests (request_id);
    """,
    # Fields plugins add to a request's row (a batch id, an identity provider), as JSON.
    "ALTER TABLE requests ADD COLUMN extra TEXT;",
)


def select_requests(query: RequestQuery,
                    placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The SELECT that answers ``query``, and its parameters in order.

    ``placeholder(n)`` writes the database's marker for the n-th parameter (from 1); every
    value the query matches goes in as a parameter, never into the SQL text.
    """
    conditions: list[str] = []
    values: list[Any] = []

    def match(condition: str, value: Any) -> None:
        values.append(value)
        conditions.append(condition.format(placeholder(len(values))))

    if query.request_id is not None:
        match("request_id = {}", query.request_id)
    if query.user is not None:
        match('"user" = {}', query.user)
    if query.model is not None:
        match("model = {}", query.model)
    if query.statuses is not None:
        match("status >= {}", query.statuses[0])
        match("status <= {}", query.statuses[1])
    if query.since is not None:
        match("ts >= {}", query.since)
    values.append(query.limit)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT {COLUMN_LIST} FROM requests{where} ORDER BY ts DESC, id DESC "
            f"LIMIT {placeholder(len(values))}", values)

#: Where the version of each plugin's own tables is kept (``register_migrations``).
PLUGIN_VERSIONS = """
CREATE TABLE IF NOT EXISTS first_proxy_migrations (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""


def fill(sql: str, *, real: str, autoid: str) -> str:
    """A migration's SQL for one database: ``{real}`` and ``{autoid}`` filled in."""
    return sql.replace("{real}", real).replace("{autoid}", autoid)

