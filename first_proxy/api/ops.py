"""Operations: liveness, Prometheus metrics, and the targets' status for people."""

from __future__ import annotations

from aiohttp import web

from ..keys import GATEWAY
from ..status import state_of
from .access import usable_targets
from .incoming import authenticate

__all__ = ["health", "metrics", "status"]


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves requests."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def status(request: web.Request) -> web.Response:
    """Every model the caller may see, each target's backend, place, state and last status,
    and its failures in a row when it has any (``cooldown``)."""
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    models = []
    for name, targets in (await usable_targets(gateway, identity)).items():
        shown = []
        for target in targets:
            found = gateway.statuses.get(target.key)
            shown.append({
                "name": target.name, "backend": target.backend, "cluster": target.cluster,
                "framework": target.framework, "state": state_of(target, found),
                "status": found.as_dict() if found is not None else None,
                "cooldown": gateway.health.state(target),
            })
        models.append({"model": name, "targets": shown})
    return web.json_response({"models": models})
