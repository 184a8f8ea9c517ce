"""FIRST's cluster routes under ``/resource_server/``: the clusters, frameworks and models a
caller may use, what runs on each cluster, and each cluster's availability.

Each answer comes from the cached statuses (never a scheduler call here) and shows only what
``authorize`` lets the caller use; a cluster they can use nothing on is a 404 to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from ..errors import NotFound
from ..gateway import Gateway
from ..keys import GATEWAY
from ..pipeline import shown
from ..status import FACTS, STATES, model_facts, state_of
from ..types import Target
from ..validation import ENDPOINTS
from .access import usable_targets
from .incoming import authenticate

__all__ = ["cluster_jobs", "cluster_models", "cluster_status", "list_endpoints"]

#: A model's state -> the list ``/{cluster}/jobs`` shows it in.
_BUCKETS = {"running": "running", "starting": "starting", "queued": "queued",
            "unknown": "unknown", "held": "stopped", "failed": "stopped", "stopped": "stopped",
            "down": "stopped"}


def _by_cluster(gateway: Gateway,
                usable: Mapping[str, list[Target]]) -> dict[str, dict[str, list[Target]]]:
    """Cluster -> model -> the caller's targets of it there; in file order, the clusters as
    :meth:`Gateway.clusters` lists them."""
    found: dict[str, dict[str, list[Target]]] = {name: {} for name in gateway.clusters()}
    for model, targets in usable.items():
        for target in targets:
            found[target.cluster].setdefault(model, []).append(target)
    return {name: models for name, models in found.items() if models}


def _summary(gateway: Gateway, cluster: str, targets: Iterable[Target]) -> dict[str, Any]:
    """A cluster's availability: ``state`` is ``maintenance``, ``up``, ``unknown`` (its
    scheduler could not be read, or nothing was checked yet) or ``down`` (every target there
    unreachable)."""
    status = gateway.cluster_statuses.get(cluster)
    maintenance = gateway.maintenance.get(cluster)
    detail: Mapping[str, Any] = status.detail if status is not None else {}
    if maintenance is not None:
        state = "maintenance"
    elif status is not None:
        state = "up" if status.reachable else "unknown"
    else:
        seen = [s.reachable for t in targets if (s := gateway.target_statuses.get(t.key))]
        state = "up" if any(seen) else "down" if seen else "unknown"
    checked = status.checked_at if status is not None else max(
        (s.checked_at for t in targets if (s := gateway.target_statuses.get(t.key))), default=None)
    return {"cluster": cluster, "state": state, "available": state == "up",
            "maintenance": maintenance, "scheduler": detail.get("scheduler"),
            "version": detail.get("version") or None, "free_nodes": detail.get("free_nodes"),
            "checked_at": checked or None,
            "last_error": status.last_error if status is not None else None}


def _model_state(gateway: Gateway, model: str, targets: list[Target]) -> dict[str, Any]:
    """The model on one cluster: its best state among the caller's targets there, and what
    the cluster's plugin says of it (jobs, since, queue position, ...)."""
    found = [(STATES.index(state_of(t, gateway.statuses.get(t.key))), t) for t in targets]
    best, target = min(found, key=lambda pair: pair[0])
    facts = model_facts(target, gateway.statuses.get(target.key))
    return {"model": model, "state": STATES[best],
            "frameworks": sorted({t.framework for t in targets}),
            **{key: facts[key] for key in FACTS if key in facts}}


async def _cluster(request: web.Request) -> tuple[Gateway, str, dict[str, list[Target]]]:
    """The gateway, the cluster the path names, and the caller's models and targets there;
    a 404 when the caller can use nothing there."""
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    name = request.match_info["cluster"]
    clusters = _by_cluster(gateway, await usable_targets(gateway, identity))
    if name not in clusters:
        known = ", ".join(clusters) or "none"
        raise NotFound(f"There is no cluster {shown(name)} among those you may use ({known}). "
                       "GET /resource_server/list-endpoints lists them.", code="cluster_not_found")
    return gateway, name, clusters[name]


def _paths(prefix: str) -> dict[str, str]:
    return {endpoint: f"{prefix}/v1/{endpoint}" for endpoint in ENDPOINTS}


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /resource_server/list-endpoints``: per cluster, its frameworks, the models on each
    and their paths; then the federated paths, where the gateway chooses the cluster."""
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    usable = await usable_targets(gateway, identity)
    clusters = {}
    for cluster, models in _by_cluster(gateway, usable).items():
        targets = [t for found in models.values() for t in found]
        frameworks: dict[str, dict[str, Any]] = {}
        for target in targets:
            framework = frameworks.setdefault(target.framework, {
                "models": [], "endpoints": _paths(f"/resource_server/{cluster}/{target.framework}")})
            if target.model not in framework["models"]:
                framework["models"].append(target.model)
        summary = _summary(gateway, cluster, targets)
        del summary["cluster"]
        clusters[cluster] = {**summary, "jobs_url": f"/resource_server/{cluster}/jobs",
                             "models_url": f"/resource_server/{cluster}/models",
                             "frameworks": frameworks}
    return web.json_response({"clusters": clusters, "federated": {
        "models": list(usable), "endpoints": _paths("/resource_server")}})


async def cluster_jobs(request: web.Request) -> web.Response:
    """``GET /resource_server/{cluster}/jobs``: the caller's models there by state."""
    gateway, cluster, models = await _cluster(request)
    body: dict[str, Any] = _summary(gateway, cluster, [t for ts in models.values() for t in ts])
    lists: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "running", "starting", "queued", "stopped", "unknown")}
    for model, targets in models.items():
        entry = _model_state(gateway, model, targets)
        lists[_BUCKETS[entry["state"]]].append(entry)
    return web.json_response({**body, **lists})


async def cluster_models(request: web.Request) -> web.Response:
    """``GET /resource_server/{cluster}/models[?model_id=]``: the caller's models there, in
    OpenAI's list shape, each with its state and paths there."""
    gateway, cluster, models = await _cluster(request)
    wanted = request.query.get("model_id")
    if wanted is not None and wanted not in models:
        raise NotFound(f"The model {shown(wanted)} is not served on {cluster} to you. GET "
                       f"/resource_server/{cluster}/models lists those that are.",
                       code="model_not_found", param="model_id")
    data = []
    for model, targets in models.items():
        if wanted is not None and model != wanted:
            continue
        entry = _model_state(gateway, model, targets)
        data.append({
            "id": model, "object": "model", "created": int(gateway.started_at),
            "owned_by": "first-proxy", "cluster": cluster,
            "description": gateway.config.models[model].description,
            **{key: value for key, value in entry.items() if key != "model"},
            "endpoints": {t.framework: _paths(f"/resource_server/{cluster}/{t.framework}")
                          for t in targets},
        })
    return web.json_response({"object": "list", "cluster": cluster, "data": data})


async def cluster_status(request: web.Request) -> web.Response:
    """``GET /resource_server/status``: each cluster the caller may use, whether it is
    available, and its maintenance message if it is under maintenance."""
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    clusters = {}
    for cluster, models in _by_cluster(gateway, await usable_targets(gateway, identity)).items():
        summary = _summary(gateway, cluster, [t for ts in models.values() for t in ts])
        del summary["cluster"]
        clusters[cluster] = summary
    return web.json_response({"clusters": clusters})
