"""first-proxy backend ``openai``: any OpenAI-compatible API.

A provider, a vLLM or SGLang server reached directly, or another first-proxy. Each target
has its own base URL, key and upstream model name; the caller's credential never leaves
the gateway. Health comes from ``GET {url}/models`` or from a status manifest.
"""

from __future__ import annotations

from first_proxy import Call, Gateway, Status, Target, UpstreamResponse, hookimpl, post_openai

from .status import check_manifest, check_models
from .validation import validate_target

BACKEND = "openai"

__all__ = ["BACKEND"]


@hookimpl
def register_backends(register) -> None:  # type: ignore[no-untyped-def]
    register(BACKEND, validate=validate_target)


@hookimpl
async def dispatch(target: Target, call: Call, gateway: Gateway) -> UpstreamResponse | None:
    if target.backend != BACKEND:
        return None
    return await post_openai(gateway, target, call, headers=target.options.get("headers"))


@hookimpl
async def report_status(target: Target, gateway: Gateway) -> Status | None:
    if target.backend != BACKEND:
        return None
    manifest = target.options.get("status_url")
    if manifest:
        return await check_manifest(gateway, target, manifest)
    return await check_models(gateway, target)
