"""GET /v1/models: the models this caller may use, in OpenAI's list shape.

Each model object also says where the model runs now, from the cached statuses:
``"first_proxy": {"running": [clusters], "starting": [...], "queued": [...]}`` (OpenAI's
clients keep fields they do not know).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from ..config import ModelConfig
from ..errors import NotFound
from ..gateway import Gateway
from ..keys import GATEWAY
from ..pipeline import shown
from ..status import state_of
from ..types import Target
from .access import allowed_targets, usable_targets
from .incoming import authenticate

__all__ = ["get_model", "list_models", "where"]


def where(gateway: Gateway, targets: Sequence[Target]) -> dict[str, list[str]]:
    """The clusters where the model of ``targets`` runs, starts or waits in a queue now;
    clusters under maintenance are left out."""
    places: dict[str, list[str]] = {"running": [], "starting": [], "queued": []}
    for target in targets:
        if target.cluster in gateway.maintenance:
            continue
        clusters = places.get(state_of(target, gateway.statuses.get(target.key)))
        if clusters is not None and target.cluster not in clusters:
            clusters.append(target.cluster)
    return places


def _model_object(gateway: Gateway, model: ModelConfig,
                  targets: Sequence[Target]) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": int(gateway.started_at),
            "owned_by": "first-proxy", "first_proxy": where(gateway, targets)}


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    usable = await usable_targets(gateway, identity)
    data = [_model_object(gateway, gateway.config.models[name], targets)
            for name, targets in usable.items()]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    name = request.match_info["model"]
    model = gateway.model(name)
    targets = await allowed_targets(gateway, identity, model) if model is not None else []
    if model is None or not targets:
        raise NotFound(f"The model {shown(name)} does not exist. GET /v1/models lists the models "
                       "you may use.", code="model_not_found", param="model")
    return web.json_response(_model_object(gateway, model, targets))
