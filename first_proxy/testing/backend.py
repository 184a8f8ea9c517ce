"""A minimal backend plugin for tests of the core: backend ``reference`` over plain HTTP."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from ..backends import Backend
from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Call, Status, Target, UpstreamResponse
from ..upstream import post_openai

__all__ = ["ReferenceBackend"]


#: What a test gives :class:`ReferenceBackend` to say a target's status.
StatusOf = Callable[[Target, Gateway], "Status | Awaitable[Status | None] | None"]


class _Reference(Backend):
    name = "reference"

    def __init__(self, status_of: StatusOf | None) -> None:
        self.status_of = status_of

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
        return await post_openai(gateway, target, call)

    async def status(self, target: Target, gateway: Gateway) -> Status | None:
        if self.status_of is None:
            return None
        status = self.status_of(target, gateway)
        return await status if inspect.isawaitable(status) else status


class ReferenceBackend:
    """A plugin serving targets with ``backend: reference`` at their ``url``, as an OpenAI
    client would. ``status``, if given, says each target's status (sync or async)."""

    __name__ = "reference_backend"

    def __init__(self, status: StatusOf | None = None) -> None:
        self.backend = _Reference(status)

    @hookimpl
    def register_backends(self, register: Callable[[Backend], None]) -> None:
        register(self.backend)
