"""The Compute half's hooks: a few lines each, handing over to :class:`GlobusComputeBackend`."""

from __future__ import annotations

import contextlib
from typing import Any

from first_proxy import Call, Gateway, GatewayConfig, Status, Target, UpstreamResponse, hookimpl

from .backend import GlobusComputeBackend
from .executors import ClientFactory
from .settings import BACKEND, NAME, check_settings

__all__ = [
    "GlobusComputePlugin",
    "check_config",
    "dispatch",
    "register_backends",
    "report_status",
    "shutdown",
    "startup",
]

_LIFESPAN = f"{NAME}:compute-lifespan"


class GlobusComputePlugin:
    """The hooks of backend ``globus_compute``, as one plugin object.

    The installed plugin is one of these; tests register their own, with ``make_client``
    pointing the executors at a fake Globus Compute.
    """

    __name__ = NAME

    def __init__(self, make_client: ClientFactory | None = None) -> None:
        self.backend = GlobusComputeBackend(make_client)

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(BACKEND, validate=self.backend.validate)

    @hookimpl
    def check_config(self, config: GatewayConfig) -> list[tuple[str, str]]:
        return check_settings(config)

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self.backend.lifespan(gateway))
        gateway.state[_LIFESPAN] = stack

    @hookimpl
    async def shutdown(self, gateway: Gateway) -> None:
        stack = gateway.state.pop(_LIFESPAN, None)
        if stack is not None:
            await stack.aclose()

    @hookimpl
    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse | None:
        if target.backend != BACKEND:
            return None
        return await self.backend.dispatch(target, call, gateway)

    @hookimpl
    async def report_status(self, target: Target, gateway: Gateway) -> Status | None:
        if target.backend != BACKEND:
            return None
        return await self.backend.status(target, gateway)


_installed = GlobusComputePlugin()
register_backends = _installed.register_backends
check_config = _installed.check_config
startup = _installed.startup
shutdown = _installed.shutdown
dispatch = _installed.dispatch
report_status = _installed.report_status
