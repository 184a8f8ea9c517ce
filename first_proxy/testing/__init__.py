"""The testing kit: a reference upstream, a gateway on loopback, and the helpers around them.

This package needs only the core's dependencies, so ``first-proxy serve --demo`` can use the
reference upstream. The pytest fixtures (``reference_upstream``, ``make_gateway``) live in
:mod:`first_proxy.testing.pytest_plugin`, which pytest loads by itself once
``first-proxy[testing]`` is installed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .backend import ReferenceBackend
from .gateway import GatewayServer
from .globus import FakeGlobus, GlobusToken, GlobusUser
from .loopback import serve_on_loopback
from .scheduler import FakeScheduler, SchedulerCall
from .upstream import ReceivedRequest, ReferenceUpstream
from .waiting import eventually

__all__ = [
    "TEST_KEY",
    "FakeGlobus",
    "FakeScheduler",
    "GatewayServer",
    "GlobusToken",
    "GlobusUser",
    "MakeGateway",
    "ReceivedRequest",
    "ReferenceBackend",
    "ReferenceUpstream",
    "SchedulerCall",
    "api_keys",
    "eventually",
    "serve_on_loopback",
]

#: The type of the ``make_gateway`` fixture: ``await make_gateway(config, plugins=[...])``.
MakeGateway = Callable[..., Awaitable[GatewayServer]]

#: The API key the fixtures' gateways accept, for the user ``tester`` in group ``staff``.
TEST_KEY = "sk-test-0123456789"


def api_keys(*entries: Mapping[str, Any]) -> dict[str, Any]:
    """An ``auth`` section: the test key, plus ``entries`` (``{"name", "key", "groups"}``)."""
    return {"api_keys": [{"name": "tester", "key": TEST_KEY, "groups": ["staff"]}, *entries]}
