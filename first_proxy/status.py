"""A target's status from what its backend says of it and what its cluster's plugin says."""

from __future__ import annotations

from .types import Status

__all__ = ["combine"]


def combine(own: Status | None, cluster: Status | None) -> Status | None:
    """One status for a target: its server's health and load (``own``), with the model
    states its cluster's scheduler reports (``cluster``) taking precedence.

    A cluster whose state could not be read (``reachable`` false) says nothing about the
    target beyond its ``last_error``: the scheduler being unreadable is not the server down.
    With no status of its own, the target's state is then ``unknown`` (``detail["state"]``),
    which the built-in selection ranks above targets known to be down.
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
    if own is None:
        return cluster
    return Status(
        reachable=own.reachable, models={**own.models, **cluster.models},
        queue_depth=own.queue_depth if own.queue_depth is not None else cluster.queue_depth,
        running_requests=own.running_requests, kv_cache_usage=own.kv_cache_usage,
        last_error=own.last_error or cluster.last_error,
        checked_at=max(own.checked_at, cluster.checked_at),
        detail={**own.detail, "cluster": cluster.as_dict()})
