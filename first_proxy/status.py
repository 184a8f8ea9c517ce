"""What the statuses say: a target's status from its backend's and its cluster's, a model's
state at a target, and the facts a cluster's plugin gives about it.

A cluster's plugin describes each model it knows of in ``detail["models"][name]``, a mapping
with any of ``state``, ``jobs`` (job ids), ``since`` (UNIX time the job started, or was
submitted when it waits), ``nodes``, ``queue_position`` (1 runs next), ``expected_start`` and
``reason``. The built-in selection reads ``queue_position`` and ``since``; the
``/resource_server/{cluster}/jobs`` route shows them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .types import Status, Target

__all__ = ["FACTS", "STATES", "cluster_detail", "combine", "model_facts", "state_of"]

#: A model's states at a target, best first. ``unknown``: nothing is known (never checked, or
#: its cluster's scheduler could not be read); ``down``: its server is known unreachable.
STATES = ("running", "starting", "queued", "unknown", "held", "failed", "stopped", "down")
#: The facts of ``detail["models"][name]`` that are shown to callers.
FACTS = ("jobs", "since", "nodes", "queue_position", "expected_start", "reason")


def combine(own: Status | None, cluster: Status | None, model: str) -> Status | None:
    """One status for a target serving ``model`` (its upstream name): its server's health and
    load (``own``), with the model states its cluster's scheduler reports (``cluster``)
    taking precedence.

    A scheduler that answered and lists no job for ``model`` says it is ``stopped`` there. A
    cluster whose state could not be read (``reachable`` false) says nothing about the target
    beyond its ``last_error``: the scheduler being unreadable is not the server down. With no
    status of its own, the target's state is then ``unknown`` (``detail["state"]``), which the
    built-in selection ranks above targets known to be down.
    """
    if cluster is None:
        return own
    if not cluster.reachable:
        if own is None:
            return Status(reachable=False, last_error=cluster.last_error,
                          checked_at=cluster.checked_at,
                          detail={**cluster.detail, "state": "unknown"})
        return Status(reachable=own.reachable, models=own.models, queue_depth=own.queue_depth,
                      running_requests=own.running_requests, kv_cache_usage=own.kv_cache_usage,
                      last_error=own.last_error, checked_at=own.checked_at,
                      detail={**own.detail, "cluster": cluster.as_dict()})
    models = dict(cluster.models)
    models.setdefault(model, "stopped")
    if own is None:
        return Status(reachable=True, models=models, queue_depth=cluster.queue_depth,
                      last_error=cluster.last_error, checked_at=cluster.checked_at,
                      detail=cluster.detail)
    return Status(
        reachable=own.reachable, models={**own.models, **models},
        queue_depth=own.queue_depth if own.queue_depth is not None else cluster.queue_depth,
        running_requests=own.running_requests, kv_cache_usage=own.kv_cache_usage,
        last_error=own.last_error or cluster.last_error,
        checked_at=max(own.checked_at, cluster.checked_at),
        detail={**own.detail, "cluster": cluster.as_dict()})


def state_of(target: Target, status: Status | None) -> str:
    """``target``'s model's state there, one of :data:`STATES`.

    A reachable target whose status lists no models serves the one it is configured for.
    """
    if status is None:
        return "unknown"
    if not status.reachable:
        return "unknown" if status.detail.get("state") == "unknown" else "down"
    models = status.models
    if not models:
        return "running"
    state = models.get(target.upstream_model) or models.get(target.model) or "stopped"
    return state if state in _KNOWN else "stopped"


_KNOWN = frozenset(STATES)


def cluster_detail(status: Status) -> Mapping[str, Any]:
    """What the cluster's plugin put in ``detail``, whether ``status`` is the cluster's own
    or a target's own status with its cluster's beside it."""
    nested = status.detail.get("cluster")
    if isinstance(nested, Mapping):
        inner = nested.get("detail")
        return inner if isinstance(inner, Mapping) else {}
    return status.detail


def model_facts(target: Target, status: Status | None) -> Mapping[str, Any]:
    """The facts ``target``'s cluster gives about its model (see the module's docstring);
    empty when it gives none."""
    if status is None:
        return {}
    models = cluster_detail(status).get("models")
    if not isinstance(models, Mapping):
        return {}
    facts = models.get(target.upstream_model) or models.get(target.model)
    return facts if isinstance(facts, Mapping) else {}
