"""The built-in order of targets: live targets first, the least loaded first among them.

It runs first (``tryfirst``); other plugins' ``select_target`` then adjust the order it gives.

Ranks, best first: reachable and serving the model; never checked; reachable but the model
still starting or queued (a cold start); unreachable or not serving the model. Within a rank
the shorter queue, then fewer running requests, then lower KV-cache use wins; ties keep the
order of gateway.yaml, so the first target listed is the preferred one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..hookspecs import hookimpl
from ..types import Status, Target

_READY, _UNKNOWN, _STARTING, _DOWN = range(4)


def rank(target: Target, status: Status | None) -> tuple[int, float, float, float]:
    if status is None:
        return (_UNKNOWN, 0.0, 0.0, 0.0)
    if not status.reachable:
        # A cluster whose scheduler could not be read: not known to be down.
        return (_UNKNOWN if status.detail.get("state") == "unknown" else _DOWN, 0.0, 0.0, 0.0)
    if not status.models:
        state: str | None = "running"
    else:
        state = status.models.get(target.upstream_model) or status.models.get(target.model)
    if state is None or state == "stopped":
        return (_DOWN, 0.0, 0.0, 0.0)
    tier = _READY if state == "running" else _STARTING
    return (tier, status.queue_depth or 0.0, status.running_requests or 0.0,
            status.kv_cache_usage or 0.0)


@hookimpl(tryfirst=True)
def select_target(candidates: Sequence[Target], statuses: Mapping[str, Status]) -> list[Target]:
    if len(candidates) < 2:
        return list(candidates)
    return sorted(candidates, key=lambda t: rank(t, statuses.get(t.key)))
