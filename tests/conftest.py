"""Shared fixtures for the core's tests: a store URL for each store, PostgreSQL isolated per test,
and an upstream that keeps the exact bytes it was sent (:mod:`bytes_upstream`).

PostgreSQL: ``FIRST_PROXY_TEST_POSTGRES`` names the database to use, and then the tests must
run (an unreachable server fails them). Without it the tests try
``postgresql://postgres@127.0.0.1:5432/test`` and are skipped if nothing answers there.
Each test gets a fresh schema, put first on the connection's ``search_path`` through the
URL, and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bytes_upstream import BytesUpstream

POSTGRES_VARIABLE = "FIRST_PROXY_TEST_POSTGRES"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

_unreachable: list[str] = []  # why the default server could not be used, once known


async def _connect(url: str):  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncpg.connect(url, timeout=5)


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a new, empty schema, dropped on exit."""
    required = os.environ.get(POSTGRES_VARIABLE)
    base = required or DEFAULT_POSTGRES
    if not required and _unreachable:
        pytest.skip(_unreachable[0])
    try:
        conn = await _connect(base)
    except Exception as e:
        if required:
            raise
        _unreachable.append(f"PostgreSQL is not reachable at {base} ({type(e).__name__}: {e}); "
                            f"set {POSTGRES_VARIABLE} to run these tests")
        pytest.skip(_unreachable[0])
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in base else "?"
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL store URL with a schema of its own for this test."""
    async with fresh_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL for each store: a SQLite file in ``tmp_path``, then a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    async with fresh_schema() as url:
        yield url


@pytest.fixture
async def bytes_upstream() -> AsyncIterator[BytesUpstream]:
    """A started :class:`BytesUpstream`."""
    upstream = BytesUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()
