"""Operations: liveness, Prometheus metrics, and the targets' status for people."""

from __future__ import annotations

from aiohttp import web

from ..keys import GATEWAY
from .incoming import authenticate

__all__ = ["health", "metrics", "status"]


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves requests."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def status(request: web.Request) -> web.Response:
    """Every model the caller may see, each target's backend, place and last status."""
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    models = []
    for model in gateway.config.models.values():
        if await gateway.hooks.authorize(identity, model.name, None) is not None:
            continue
        targets = []
        for target in model.targets:
            if await gateway.hooks.authorize(identity, model.name, target) is not None:
                continue
            found = gateway.statuses.get(target.key)
            targets.append({
                "name": target.name, "backend": target.backend, "cluster": target.cluster,
                "framework": target.framework,
                "status": found.as_dict() if found is not None else None,
            })
        if targets:
            models.append({"model": model.name, "targets": targets})
    return web.json_response({"models": models})
