"""The stores: migrations, request rows in and out, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from first_proxy.store import RequestQuery, open_store, postgres, sqlite
from first_proxy.store.postgres import PostgresStore
from first_proxy.store.schema import COLUMNS, MIGRATIONS
from first_proxy.store.sqlite import SQLiteStore
from first_proxy.types import RequestRecord


async def schema_versions(url: str) -> list[int]:
    """The schema versions the store at ``url`` has recorded."""
    if url.startswith("sqlite:///"):
        import aiosqlite

        async with aiosqlite.connect(url.removeprefix("sqlite:///")) as db:
            row = await (await db.execute("PRAGMA user_version")).fetchone()
            return list(range(1, row[0] + 1))
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT version FROM first_proxy_schema ORDER BY version")]
    finally:
        await conn.close()


async def index_names(url: str) -> set[str]:
    """The names of the indexes on the request log's table."""
    if url.startswith("sqlite:///"):
        import aiosqlite

        async with aiosqlite.connect(url.removeprefix("sqlite:///")) as db:
            rows = await (await db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'"
            )).fetchall()
            return {row[0] for row in rows}
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {r[0] for r in await conn.fetch(
            "SELECT indexname FROM pg_indexes "
            "WHERE tablename = 'requests' AND schemaname = current_schema()")}
    finally:
        await conn.close()


def full_row(i: int, ts: float) -> RequestRecord:
    """A row with every field set to something other than its default."""
    return RequestRecord(
        ts=ts, request_id=f"req-{i}", endpoint="chat/completions", user=f"key:user{i}",
        model="m-1", target="t-1", status=200, latency_ms=12.5 + i, ttft_ms=3.25,
        prompt_tokens=11, completion_tokens=7 + i, stream=True, attempts=2,
        error="upstream_error", prompt='{"model": "m-1"}',
    )


async def test_open_twice_migrates_once(store_url: str) -> None:
    store = await open_store(store_url)
    await store.insert_requests([full_row(1, time.time())])
    await store.close()

    again = await open_store(store_url)
    try:
        rows = await again.recent_requests()
    finally:
        await again.close()
    assert [r["request_id"] for r in rows] == ["req-1"]
    assert await schema_versions(store_url) == list(range(1, len(MIGRATIONS) + 1))


async def test_rows_round_trip_with_every_field(store_url: str) -> None:
    now = time.time()
    written = [
        full_row(1, now),
        RequestRecord(ts=now - 1, request_id="bare", endpoint="embeddings", status=401),
    ]
    store = await open_store(store_url)
    try:
        await store.insert_requests(written)
        rows = await store.recent_requests()
    finally:
        await store.close()
    assert rows == [written[0].as_dict(), written[1].as_dict()]
    assert set(rows[0]) == set(COLUMNS)
    assert rows[0]["stream"] is True
    assert rows[1]["stream"] is False
    assert rows[1]["user"] is None and rows[1]["ttft_ms"] is None


async def test_newest_first_and_limit(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        # Out of order, across batches; rows 5 and 6 share a timestamp.
        await store.insert_requests([full_row(i, 1000.0 + i) for i in (3, 1, 4)])
        await store.insert_requests([full_row(i, 1000.0 + i) for i in (0, 2)])
        await store.insert_requests([full_row(5, 1010.0), full_row(6, 1010.0)])
        newest = await store.recent_requests(limit=3)
        everything = await store.recent_requests(limit=100)
    finally:
        await store.close()
    assert [r["request_id"] for r in newest] == ["req-6", "req-5", "req-4"]
    assert [r["request_id"] for r in everything] == [f"req-{i}" for i in (6, 5, 4, 3, 2, 1, 0)]


@pytest.mark.parametrize("sizes", [(0, 1, 49), (50, 51), (137, 100, 3)])
async def test_batches_of_any_size_are_written_whole(store_url: str, sizes: tuple[int, ...]) -> None:
    # Stores may write a batch in pieces (SQLite: statements of a fixed number of rows, then
    # the rest one by one); every row must arrive once, with its own values.
    store = await open_store(store_url)
    written: list[RequestRecord] = []
    try:
        for size in sizes:
            batch = [full_row(len(written) + i, 1000.0 + len(written) + i) for i in range(size)]
            await store.insert_requests(batch)
            written.extend(batch)
        rows = await store.recent_requests(limit=1000)
    finally:
        await store.close()
    assert rows == [row.as_dict() for row in reversed(written)]


async def test_sqlite_store_creates_its_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "deeper" / "still" / "log.db"
    store = await open_store(f"sqlite:///{path}")
    await store.close()
    assert isinstance(store, SQLiteStore)
    assert path.exists()


async def test_closed_store_refuses_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = await open_store(f"sqlite:///{tmp_path}/log.db")
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.insert_requests([full_row(1, time.time())])


async def test_unknown_store_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        await open_store("mysql://somewhere/db")


async def test_postgres_instances_opening_together_migrate_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        for i, store in enumerate(stores):
            await store.insert_requests([full_row(i, 2000.0 + i)])
        rows = await stores[0].recent_requests()
    finally:
        for store in stores:
            await store.close()
    assert [r["request_id"] for r in rows] == ["req-2", "req-1", "req-0"]
    assert await schema_versions(postgres_url) == list(range(1, len(MIGRATIONS) + 1))


def logged(request_id: str, ts: float, user: str, model: str, status: int) -> RequestRecord:
    return RequestRecord(ts=ts, request_id=request_id, endpoint="chat/completions", user=user,
                         model=model, status=status, error=None if status < 400 else "e")


#: Rows named a to f, oldest first; a and f came with the same X-Request-Id.
FILTERED = {
    "a": logged("same", 1000.0, "key:alice", "m-1", 200),
    "b": logged("b", 1010.0, "key:bob", "m-1", 404),
    "c": logged("c", 1020.0, "key:alice", "m-2", 200),
    "d": logged("d", 1030.0, "key:bob", "m-2", 503),
    "e": logged("e", 1040.0, "key:alice", "m-1", 502),
    "f": logged("same", 1050.0, "key:alice", "m-1", 201),
}
#: What each query finds among FILTERED, newest first.
QUERIES = {
    "everything": (RequestQuery(), "fedcba"),
    "one id": (RequestQuery(request_id="c"), "c"),
    "an id two callers sent": (RequestQuery(request_id="same"), "fa"),
    "user": (RequestQuery(user="key:alice"), "feca"),
    "model": (RequestQuery(model="m-2"), "dc"),
    "one status": (RequestQuery(statuses=(404, 404)), "b"),
    "a status class": (RequestQuery(statuses=(500, 599)), "ed"),
    "since": (RequestQuery(since=1030.0), "fed"),
    "all at once": (RequestQuery(user="key:alice", model="m-1", statuses=(200, 299),
                                 since=1010.0), "f"),
    "with a limit": (RequestQuery(user="key:alice", limit=2), "fe"),
    "no such id": (RequestQuery(request_id="absent"), ""),
    "quotes in a value": (RequestQuery(request_id="x' OR '1'='1"), ""),
}


async def test_find_requests_by_id_user_model_status_and_time(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.insert_requests(list(FILTERED.values()))
        found = {name: await store.find_requests(query) for name, (query, _) in QUERIES.items()}
    finally:
        await store.close()
    name_at = {row.ts: name for name, row in FILTERED.items()}
    assert {query: "".join(name_at[r["ts"]] for r in rows) for query, rows in found.items()} == {
        query: expected for query, (_, expected) in QUERIES.items()}
    assert found["one id"] == [FILTERED["c"].as_dict()]


async def test_a_store_from_before_the_request_id_index_gets_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as first_release:
        for module in (sqlite, postgres):
            first_release.setattr(module, "MIGRATIONS", MIGRATIONS[:1])
        old = await open_store(store_url)
        await old.close()
    assert "requests_request_id" not in await index_names(store_url)

    store = await open_store(store_url)
    try:
        await store.insert_requests([full_row(1, 1000.0)])
        rows = await store.find_requests(RequestQuery(request_id="req-1"))
    finally:
        await store.close()
    assert [r["request_id"] for r in rows] == ["req-1"]
    assert "requests_request_id" in await index_names(store_url)
    assert await schema_versions(store_url) == list(range(1, len(MIGRATIONS) + 1))
