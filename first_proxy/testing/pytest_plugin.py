"""The testing kit's pytest fixtures, registered through the ``pytest11`` entry point.

Installing ``first-proxy[testing]`` is all it takes: pytest finds this module by itself, so
``reference_upstream`` and ``make_gateway`` are there in every test, with no ``-p`` flag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from . import FakeGlobus, GatewayServer, MakeGateway, ReferenceUpstream, api_keys

__all__ = ["fake_globus", "make_gateway", "reference_upstream"]


@pytest.fixture
async def reference_upstream() -> AsyncIterator[ReferenceUpstream]:
    """A started :class:`ReferenceUpstream` serving ``reference-model``."""
    async with ReferenceUpstream() as upstream:
        yield upstream


@pytest.fixture
async def fake_globus(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGlobus]:
    """A started :class:`FakeGlobus`; globus-sdk clients made during the test call it.

    It sets ``GLOBUS_SDK_SERVICE_URL_AUTH`` and ``GLOBUS_SDK_SERVICE_URL_GROUPS``, which the
    SDK reads when a client is constructed.
    """
    async with FakeGlobus() as fake:
        monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", fake.url)
        monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_GROUPS", fake.url)
        yield fake


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[MakeGateway]:
    """A factory: ``await make_gateway(config, plugins=[...])`` → a started :class:`GatewayServer`
    (on ``port=`` if given, for a gateway that must know its own URL before it starts).

    The config gets the test key and a SQLite store in ``tmp_path`` unless it sets its own.
    Every gateway made is closed at the end of the test.
    """
    started: list[GatewayServer] = []

    async def make(config: Mapping[str, Any], *, plugins: Iterable[Any] = (),
                   load_entrypoints: bool = False, port: int = 0) -> GatewayServer:
        full = {"auth": api_keys(), "store": f"sqlite:///{tmp_path}/gateway.db",
                "status": {"interval": 3600}, **config}
        server = GatewayServer(full, plugins=plugins, load_entrypoints=load_entrypoints)
        await server.start(port)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        await server.close()
