"""The testing kit: a reference upstream, a gateway on loopback, and pytest fixtures.

Enable it in a plugin's tests with ``-p first_proxy.testing`` (or ``pytest_plugins`` in the
top-level conftest.py) and install ``first-proxy[testing]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import pytest

from .backend import ReferenceBackend
from .gateway import GatewayServer
from .scheduler import FakeScheduler, SchedulerCall
from .upstream import ReceivedRequest, ReferenceUpstream
from .waiting import eventually

__all__ = [
    "TEST_KEY",
    "FakeScheduler",
    "GatewayServer",
    "MakeGateway",
    "ReceivedRequest",
    "ReferenceBackend",
    "ReferenceUpstream",
    "SchedulerCall",
    "api_keys",
    "eventually",
    "make_gateway",
    "reference_upstream",
]

#: The type of the ``make_gateway`` fixture: ``await make_gateway(config, plugins=[...])``.
MakeGateway = Callable[..., Awaitable[GatewayServer]]

#: The API key the fixtures' gateways accept, for the user ``tester`` in group ``staff``.
TEST_KEY = "sk-test-0123456789"


def api_keys(*entries: Mapping[str, Any]) -> dict[str, Any]:
    """An ``auth`` section: the test key, plus ``entries`` (``{"name", "key", "groups"}``)."""
    return {"api_keys": [{"name": "tester", "key": TEST_KEY, "groups": ["staff"]}, *entries]}


@pytest.fixture
async def reference_upstream() -> AsyncIterator[ReferenceUpstream]:
    """A started :class:`ReferenceUpstream` serving ``reference-model``."""
    async with ReferenceUpstream() as upstream:
        yield upstream


@pytest.fixture
async def make_gateway(tmp_path: Any) -> AsyncIterator[MakeGateway]:
    """A factory: ``await make_gateway(config, plugins=[...])`` → a started :class:`GatewayServer`.

    The config gets the test key and a SQLite store in ``tmp_path`` unless it sets its own.
    Every gateway made is closed at the end of the test.
    """
    started: list[GatewayServer] = []

    async def make(config: Mapping[str, Any], *, plugins: Iterable[Any] = (),
                   load_entrypoints: bool = False) -> GatewayServer:
        full = {"auth": api_keys(), "store": f"sqlite:///{tmp_path}/gateway.db",
                "status": {"interval": 3600}, **config}
        server = GatewayServer(full, plugins=plugins, load_entrypoints=load_entrypoints)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        await server.close()
