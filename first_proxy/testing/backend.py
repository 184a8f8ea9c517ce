"""A minimal backend plugin for tests of the core: backend ``reference`` over plain HTTP."""

from __future__ import annotations

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Call, Target, UpstreamResponse
from ..upstream import post_openai

__all__ = ["ReferenceBackend"]


class ReferenceBackend:
    """Dispatches targets with ``backend: reference`` to their ``url``, as an OpenAI client."""

    __name__ = "reference_backend"

    @hookimpl
    def register_backends(self, register) -> None:  # type: ignore[no-untyped-def]
        register("reference")

    @hookimpl
    async def dispatch(self, target: Target, call: Call,
                       gateway: Gateway) -> UpstreamResponse | None:
        if target.backend != "reference":
            return None
        return await post_openai(gateway, target, call)
