"""GET /v1/models: the models this caller may use, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import ModelConfig
from ..errors import NotFound
from ..gateway import Gateway
from ..keys import GATEWAY
from ..pipeline import shown
from ..types import Identity
from .incoming import authenticate

__all__ = ["get_model", "list_models"]


async def _usable(gateway: Gateway, identity: Identity, model: ModelConfig) -> bool:
    if await gateway.hooks.authorize(identity, model.name, None) is not None:
        return False
    for target in model.targets:
        if await gateway.hooks.authorize(identity, model.name, target) is None:
            return True
    return False


def _model_object(gateway: Gateway, model: ModelConfig) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": int(gateway.started_at),
            "owned_by": "first-proxy"}


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    data = [_model_object(gateway, m) for m in gateway.config.models.values()
            if await _usable(gateway, identity, m)]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    name = request.match_info["model"]
    model = gateway.model(name)
    if model is None or not await _usable(gateway, identity, model):
        raise NotFound(f"The model {shown(name)} does not exist. GET /v1/models lists the models "
                       "you may use.", code="model_not_found", param="model")
    return web.json_response(_model_object(gateway, model))
