"""Graceful shutdown: in-flight streams finish, and no request-log row is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from first_proxy.store import Store
from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, ReferenceUpstream, eventually
from first_proxy.types import RequestRecord

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
WORDS = " ".join(f"w{i}" for i in range(12))


def config(upstream: ReferenceUpstream, db: Path, **extra: Any) -> dict[str, Any]:
    return {"store": f"sqlite:///{db}", **extra, "models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": upstream.url}]}}}


async def start(make_gateway: Any, upstream: ReferenceUpstream, db: Path,
                **extra: Any) -> GatewayServer:
    return await make_gateway(config(upstream, db, **extra), plugins=[ReferenceBackend()])


async def complete(server: GatewayServer, request_id: str) -> None:
    headers = {**AUTH, "X-Request-Id": request_id}
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/completions", headers=headers,
            json={"model": MODEL, "prompt": "short"}) as response:
        assert response.status == 200
        await response.read()


def rows_in_file(db: Path) -> dict[str, dict[str, Any]]:
    """The request-log rows in the SQLite file, read with the standard library."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM requests").fetchall()
    return {row["request_id"]: dict(row) for row in rows}



class FailingStore:
    """A store whose first ``failures`` writes raise, as a database that is down would."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls = 0

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("database is down")
        await self.store.insert_requests(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_stream_in_flight_completes_and_logs_are_flushed(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    reference_upstream.chunk_delay = 0.05
    db = tmp_path / "logs.db"
    # No timed flush: only the one at shutdown can write the rows.
    server = await start(make_gateway, reference_upstream, db, request_log={"flush_interval": 3600})
    await complete(server, "before-shutdown")
    headers = {**AUTH, "X-Request-Id": "streamed-through-shutdown"}
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/completions", headers=headers,
            json={"model": MODEL, "prompt": WORDS, "stream": True}) as response:
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        closing = asyncio.create_task(server.close())
        rest = await response.read()
    await closing
    events = [line[6:] for line in (first + rest).split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == WORDS

    rows = await asyncio.to_thread(rows_in_file, db)
    assert set(rows) == {"before-shutdown", "streamed-through-shutdown"}
    streamed = rows["streamed-through-shutdown"]
    assert (streamed["status"], streamed["stream"], streamed["completion_tokens"]) == (200, 1, 12)

    # A new gateway on the same file reads what the first one wrote.
    again = await start(make_gateway, reference_upstream, db)
    assert again.gateway.store is not None
    found = {row["request_id"]: row for row in await again.gateway.store.recent_requests()}
    assert set(found) == set(rows)
    assert found["streamed-through-shutdown"]["stream"] is True
    assert found["before-shutdown"]["user"] == "key:tester"


async def test_a_stream_outliving_the_grace_period_ends_with_an_error_event(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    reference_upstream.chunk_delay = 0.2  # 12 words: far longer than the grace period
    db = tmp_path / "logs.db"
    server = await start(make_gateway, reference_upstream, db, server={"shutdown_grace": 0.4})
    headers = {**AUTH, "X-Request-Id": "cut-by-shutdown"}
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/completions", headers=headers,
            json={"model": MODEL, "prompt": WORDS, "stream": True}) as response:
        first = await response.content.readline()
        closing = asyncio.create_task(server.close())
        rest = await response.read()  # a clean end: no payload error
    await closing
    events = [line[6:] for line in (first + rest).split(b"\n") if line.startswith(b"data: ")]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "gateway_shutting_down"
    assert "send the request again" in error["message"]
    assert len(events) > 2  # what was generated before reached the caller
    assert reference_upstream.cancelled == 1
    row = (await asyncio.to_thread(rows_in_file, db))["cut-by-shutdown"]
    assert (row["status"], row["error"]) == (200, "gateway_shutting_down")


async def test_a_call_outliving_the_grace_period_gets_503(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    reference_upstream.delay = 30
    db = tmp_path / "logs.db"
    server = await start(make_gateway, reference_upstream, db, server={"shutdown_grace": 0.4})
    headers = {**AUTH, "X-Request-Id": "waiting-at-shutdown"}
    async with aiohttp.ClientSession() as http:
        answer = asyncio.create_task(http.post(
            f"{server.base_url}/completions", headers=headers, json={"model": MODEL, "prompt": "x"}))
        await eventually(lambda: reference_upstream.active == 1)
        closing = asyncio.create_task(server.close())
        async with await answer as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            error = (await response.json())["error"]
    await closing
    assert error["code"] == "gateway_shutting_down"
    assert reference_upstream.cancelled == 1
    row = (await asyncio.to_thread(rows_in_file, db))["waiting-at-shutdown"]
    assert (row["status"], row["error"]) == (503, "gateway_shutting_down")


async def test_new_connections_are_refused_after_close(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    server = await start(make_gateway, reference_upstream, tmp_path / "logs.db")
    url = server.url
    await server.close()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{url}/health")


async def test_rows_are_kept_while_the_store_fails(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    server = await start(make_gateway, reference_upstream, tmp_path / "logs.db",
                         request_log={"flush_interval": 3600})
    log, store = server.gateway.request_log, server.gateway.store
    assert log is not None and store is not None
    failing = FailingStore(store, failures=2)
    log.store = failing  # type: ignore[assignment]
    for i in range(3):
        await complete(server, f"req-{i}")

    assert not await log.flush()
    assert not await log.flush()
    assert log.pending == 3
    assert await log.flush()
    assert log.pending == 0
    rows = await store.recent_requests()
    assert sorted(row["request_id"] for row in rows) == ["req-0", "req-1", "req-2"]
    assert failing.calls == 3


async def test_background_writer_retries_until_the_store_is_back(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    server = await start(make_gateway, reference_upstream, tmp_path / "logs.db",
                         request_log={"flush_interval": 0.05})
    log, store = server.gateway.request_log, server.gateway.store
    assert log is not None and store is not None
    failing = FailingStore(store, failures=3)
    log.store = failing  # type: ignore[assignment]
    await complete(server, "written-late")
    await eventually(lambda: log.pending == 0)
    assert failing.calls == 4
    assert [row["request_id"] for row in await store.recent_requests()] == ["written-late"]


async def test_rows_buffered_during_an_outage_are_written_at_shutdown(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    db = tmp_path / "logs.db"
    server = await start(make_gateway, reference_upstream, db, request_log={"flush_interval": 3600})
    log, store = server.gateway.request_log, server.gateway.store
    assert log is not None and store is not None
    log.store = FailingStore(store, failures=1)  # type: ignore[assignment]
    await complete(server, "kept-through-outage")
    assert not await log.flush()
    await server.close()
    rows = await asyncio.to_thread(rows_in_file, db)
    assert list(rows) == ["kept-through-outage"]


class GatedStore:
    """A store whose first write waits for ``gate``: a slow database in the middle of a write."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0
        self.writing = 0

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        self.calls += 1
        self.writing += 1
        try:
            if self.calls == 1:
                self.entered.set()
                await self.gate.wait()
            await self.store.insert_requests(rows)
        finally:
            self.writing -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_flush_during_a_background_write_neither_duplicates_nor_drops(
        make_gateway: Any, reference_upstream: ReferenceUpstream, tmp_path: Path) -> None:
    server = await start(make_gateway, reference_upstream, tmp_path / "logs.db",
                         request_log={"flush_interval": 0.05})
    log, store = server.gateway.request_log, server.gateway.store
    assert log is not None and store is not None
    gated = GatedStore(store)
    log.store = gated  # type: ignore[assignment]
    await complete(server, "first")
    async with asyncio.timeout(10):  # until the background writer is stuck writing "first"
        await gated.entered.wait()
    await complete(server, "second")
    flushing = asyncio.create_task(log.flush())
    await asyncio.sleep(0)  # let the flush run up to where it waits
    gated.gate.set()
    assert await flushing
    await eventually(lambda: not (log.pending or gated.writing))
    rows = [row["request_id"] for row in await store.recent_requests()]
    assert sorted(rows) == ["first", "second"]
