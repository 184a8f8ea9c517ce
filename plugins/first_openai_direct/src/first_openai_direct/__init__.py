"""first-proxy backend ``openai``: any OpenAI-compatible API.

A provider, a vLLM or SGLang server reached directly, or another first-proxy. Each target
has its own base URL, key and upstream model name; the caller's credential never leaves
the gateway. Health comes from ``GET {url}/models`` or from a status manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from first_proxy import Backend, Call, Gateway, Status, Target, UpstreamResponse, hookimpl, post_openai

from .status import check_manifest, check_models
from .validation import validate_target

__all__ = ["OpenAIBackend"]


class OpenAIBackend(Backend):
    """Targets with ``backend: openai``."""

    name = "openai"

    def validate(self, target: Target, path: str) -> list[tuple[str, str]]:
        return validate_target(target, path)

    def dispatch(self, target: Target, call: Call,
                 gateway: Gateway) -> Coroutine[Any, Any, UpstreamResponse]:
        # post_openai's own coroutine, handed back rather than awaited here: one frame fewer
        # for every request and every resumption of it.
        return post_openai(gateway, target, call, headers=target.options.get("headers"))

    async def status(self, target: Target, gateway: Gateway) -> Status:
        manifest = target.options.get("status_url")
        if manifest:
            return await check_manifest(gateway, target, manifest)
        return await check_models(gateway, target)


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(OpenAIBackend())
