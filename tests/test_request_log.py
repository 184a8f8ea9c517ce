"""The buffered request log: batching, surviving a store outage, bounded memory, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from first_proxy.config import RequestLogConfig
from first_proxy.metrics import Metrics
from first_proxy.requestlog import RequestLog
from first_proxy.store import open_store
from first_proxy.store.sqlite import SQLiteStore
from first_proxy.testing import TEST_KEY, ReferenceBackend, ReferenceUpstream, eventually
from first_proxy.types import RequestRecord


class WatchedStore(SQLiteStore):
    """A real SQLite store that remembers each write it was asked for and how it went."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.failures = 0

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        try:
            await super().insert_requests(rows)
        except Exception:
            self.failures += 1
            raise
        self.batches.append(len(rows))




def row(i: int) -> RequestRecord:
    return RequestRecord(ts=1000.0 + i, request_id=f"r{i}", endpoint="chat/completions",
                         status=200)


async def stored_ids(store: SQLiteStore) -> list[str]:
    return [r["request_id"] for r in reversed(await store.recent_requests(1000))]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[WatchedStore]:
    store = WatchedStore(str(tmp_path / "log.db"))
    await store.open()
    yield store
    await store.close()


def make_log(store: WatchedStore, **settings: Any) -> tuple[RequestLog, Metrics]:
    metrics = Metrics()
    config = RequestLogConfig(**{"flush_interval": 3600.0, **settings})
    return RequestLog(store, config, metrics), metrics


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store: WatchedStore) -> None:
    log, _ = make_log(store, batch_size=3)
    log.start()
    try:
        log.add(row(0))
        log.add(row(1))
        assert log.pending == 2
        log.add(row(2))
        await eventually(lambda: store.batches)
        assert store.batches == [3]
        for i in range(3, 10):
            log.add(row(i))
        # Whole batches go at once; the odd row waits for the next batch or the interval
        # rather than cost a write of its own.
        await eventually(lambda: log.pending == 1)
        assert store.batches == [3, 3, 3]
    finally:
        await log.aclose()
    assert store.batches == [3, 3, 3, 1]
    assert await stored_ids(store) == [f"r{i}" for i in range(10)]


async def test_rows_are_written_every_interval(store: WatchedStore) -> None:
    log, _ = make_log(store, batch_size=1000, flush_interval=0.05)
    log.start()
    try:
        log.add(row(0))
        await eventually(lambda: store.batches)
        log.add(row(1))
        await eventually(lambda: len(store.batches) == 2)
        assert store.batches == [1, 1]
        assert await stored_ids(store) == ["r0", "r1"]
    finally:
        await log.aclose()


async def test_rows_wait_out_a_store_outage(store: WatchedStore) -> None:
    log, _ = make_log(store, batch_size=1000, flush_interval=0.02)
    await store.close()  # the store goes away
    log.start()
    try:
        for i in range(4):
            log.add(row(i))
        await eventually(lambda: store.failures >= 2)  # retried, and failed again
        assert log.pending == 4
        await store.open()  # and comes back
        await eventually(lambda: log.pending == 0)
        assert await stored_ids(store) == ["r0", "r1", "r2", "r3"]
    finally:
        await log.aclose()


async def test_a_store_outage_under_load_is_retried_once_an_interval(store: WatchedStore) -> None:
    # Once a full batch has failed, more requests must not each start another attempt: that
    # would hammer the store, and log a warning, on every request while it is down.
    log, _ = make_log(store, batch_size=3, flush_interval=3600.0)
    await store.close()
    log.start()
    try:
        for i in range(3):
            log.add(row(i))
        await eventually(lambda: store.failures == 1)
        for i in range(3, 50):
            log.add(row(i))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert store.failures == 1
        assert log.pending == 50
    finally:
        await store.open()
        await log.aclose()
    assert len(await stored_ids(store)) == 50


async def test_flush_reports_failure_and_keeps_rows(store: WatchedStore) -> None:
    log, _ = make_log(store)
    log.add(row(0))
    await store.close()
    assert await log.flush() is False
    assert log.pending == 1
    await store.open()
    assert await log.flush() is True
    assert log.pending == 0
    assert await stored_ids(store) == ["r0"]


async def test_oldest_rows_are_dropped_past_max_buffer(store: WatchedStore) -> None:
    log, metrics = make_log(store, max_buffer=5)
    await store.close()
    for i in range(8):
        log.add(row(i))
    assert await log.flush() is False
    assert log.pending == 5
    assert metrics.registry.get_sample_value("first_proxy_request_log_dropped_total") == 3
    await store.open()
    assert await log.flush() is True
    assert await stored_ids(store) == ["r3", "r4", "r5", "r6", "r7"]
    assert b"first_proxy_request_log_dropped_total 3.0" in metrics.render()


async def test_aclose_writes_what_is_buffered(store: WatchedStore) -> None:
    log, _ = make_log(store, batch_size=1000)
    log.start()
    for i in range(3):
        log.add(row(i))
    assert store.batches == []
    await log.aclose()
    assert await stored_ids(store) == ["r0", "r1", "r2"]


async def test_aclose_without_a_store_keeps_the_rows(store: WatchedStore) -> None:
    log, _ = make_log(store)
    log.start()
    log.add(row(0))
    await store.close()
    await log.aclose()  # logs the loss, does not raise
    assert log.pending == 1


async def test_gateway_on_postgres_logs_its_requests(
    make_gateway: Any, reference_upstream: ReferenceUpstream, postgres_url: str
) -> None:
    server = await make_gateway(
        {"store": postgres_url, "models": {"m": {"targets": [
            {"name": "a", "backend": "reference", "url": reference_upstream.url,
             "model": "reference-model"}]}}},
        plugins=[ReferenceBackend()])
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    answer = await asyncio.to_thread(
        client.chat.completions.create, model="m",
        messages=[{"role": "user", "content": "three little words"}])
    stream = await asyncio.to_thread(
        client.chat.completions.create, model="m", stream=True,
        messages=[{"role": "user", "content": "two words"}])
    text = await asyncio.to_thread(lambda: "".join(
        c.choices[0].delta.content or "" for c in stream if c.choices))
    assert answer.choices[0].message.content == "three little words"
    assert text == "two words"
    await server.close()  # flushes the request log

    store = await open_store(postgres_url)
    try:
        rows = await store.recent_requests()
    finally:
        await store.close()
    assert [(r["model"], r["target"], r["status"], r["stream"]) for r in rows] == [
        ("m", "a", 200, True), ("m", "a", 200, False)]
    assert all(r["user"] == "key:tester" for r in rows)
    assert rows[1]["completion_tokens"] == 3
    assert rows[1]["prompt_tokens"] == answer.usage.prompt_tokens
    assert rows[0]["completion_tokens"] == 2
    assert rows[0]["ttft_ms"] is not None
