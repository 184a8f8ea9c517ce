"""Health and load of an OpenAI-compatible target.

Without a manifest the target is up when ``GET {url}/models`` answers, and serves the models
it lists. A status manifest is JSON an operator or a scheduler job publishes (a static file
is enough)::

    {"status": "online",                      # or "offline" / "maintenance"
     "models": {"llama-3.1-8b": "running"},   # or a list of the names running
     "queue_depth": 0, "running_requests": 3, "kv_cache_usage": 0.4}
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from first_proxy import Gateway, Status, Target

_STATES = frozenset({"running", "queued", "starting", "stopped"})


async def check_models(gateway: Gateway, target: Target) -> Status:
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    async with gateway.session(target).get(f"{target.url}/models", headers=headers) as response:
        if response.status != 200:
            return Status(reachable=False, last_error=f"GET /models answered {response.status}")
        data = await response.json(loads=orjson.loads, content_type=None)
    names = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
    return Status(reachable=True, models={n: "running" for n in names if isinstance(n, str)})


async def check_manifest(gateway: Gateway, target: Target, url: str) -> Status:
    if url.startswith("file://"):
        raw = await asyncio.to_thread(Path(unquote(urlparse(url).path)).read_bytes)
    else:
        async with gateway.session(target).get(url) as response:
            if response.status != 200:
                return Status(reachable=False,
                              last_error=f"status manifest answered {response.status}")
            raw = await response.read()
    try:
        return parse_manifest(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError) as e:
        return Status(reachable=False, last_error=f"status manifest is not valid: {e}")


def parse_manifest(data: Any) -> Status:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    state = data.get("status", "online")
    models = data.get("models") or {}
    if isinstance(models, list):
        models = {name: "running" for name in models}
    if not isinstance(models, dict) or not all(v in _STATES for v in models.values()):
        raise ValueError(f"models must map names to one of {sorted(_STATES)}")
    return Status(
        reachable=state == "online",
        models=models,
        queue_depth=_number(data, "queue_depth"),
        running_requests=_number(data, "running_requests"),
        kv_cache_usage=_number(data, "kv_cache_usage"),
        last_error=None if state == "online" else f"status manifest says {state}",
    )


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number")
    return float(value)


__all__ = ["check_manifest", "check_models", "parse_manifest"]
