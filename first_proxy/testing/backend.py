"""A minimal backend plugin for tests of the core: backend ``reference`` over plain HTTP."""

from __future__ import annotations

from collections.abc import Callable

from ..backends import Backend
from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Call, Target, UpstreamResponse
from ..upstream import post_openai

__all__ = ["ReferenceBackend"]


class _Reference(Backend):
    name = "reference"

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
        return await post_openai(gateway, target, call)


class ReferenceBackend:
    """A plugin serving targets with ``backend: reference`` at their ``url``, as an OpenAI
    client would."""

    __name__ = "reference_backend"

    @hookimpl
    def register_backends(self, register: Callable[[Backend], None]) -> None:
        register(_Reference())
