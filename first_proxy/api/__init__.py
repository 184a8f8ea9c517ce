"""OpenAI-compatible routes, under /v1/ and the FIRST-compatible /resource_server/ prefix."""

from __future__ import annotations

from aiohttp import web

from . import inference, models, ops

__all__ = ["setup_routes"]

PREFIXES = ("/v1", "/resource_server/v1")
#: A target pinned by path: /resource_server/{cluster}/{framework}/v1/...
PINNED = "/resource_server/{cluster}/{framework}/v1"


def setup_routes(app: web.Application) -> None:
    router = app.router
    for prefix in (*PREFIXES, PINNED):
        for endpoint, handler in inference.HANDLERS.items():
            router.add_post(f"{prefix}/{endpoint}", handler)
    for prefix in PREFIXES:
        router.add_get(f"{prefix}/models", models.list_models)
        router.add_get(prefix + "/models/{model:.+}", models.get_model)
    router.add_get("/health", ops.health)
    router.add_get("/metrics", ops.metrics)
    router.add_get("/status", ops.status)
    router.add_get("/resource_server/status", ops.status)
