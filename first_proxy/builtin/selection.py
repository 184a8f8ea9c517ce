"""The built-in order of targets: where the model runs now first, the least loaded first.

It runs first (``tryfirst``); other plugins' ``select_target`` then adjust the order it gives.
Tiers, best first (see docs/federation.md for a worked example):

1. running, least loaded first: the shorter queue, then fewer running requests (what the
   target last reported, or the calls this gateway has running there now if more), then lower
   KV-cache use; a target that reports none of these goes after those that do;
2. starting (its job runs, the model is loading);
3. queued, the shortest wait first: the lower queue position, then the job that has waited
   longest;
4. unknown (never checked, or its scheduler could not be read);
5. held, failed, stopped, or its server down;
6. cooled down: it failed ``status.cooldown_failures`` times in a row (see
   :mod:`first_proxy.health`).

Targets equal on all of that go by their ``weight``, higher first, then take turns: each call
for a model starts one further along the equals (round-robin).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from itertools import groupby

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..status import model_facts, state_of
from ..types import Status, Target

__all__ = ["COOLED", "TIERS", "order", "rank"]

_STATE = "first_proxy.builtin.selection"
#: A model's state at a target -> its tier; every other state is ranked as ``down``.
TIERS = {"running": 0, "starting": 1, "queued": 2, "unknown": 3}
_DOWN = 4
#: The tier of a target that is cooled down.
COOLED = 5
_INF = float("inf")
_IDLE: Mapping[str, int] = {}


def rank(target: Target, status: Status | None, cooled: bool = False,
         busy: int = 0) -> tuple[float, ...]:
    """``target``'s place: lower goes first. ``(tier, four tie-breaks within it, -weight)``.

    ``busy`` is the calls this gateway has running there now: between two status checks it
    is a fresher count of running requests than the last check's.
    """
    if cooled:
        return (COOLED, 0, 0.0, 0.0, 0.0, -target.weight)
    tier = TIERS.get(state_of(target, status), _DOWN)
    if tier == 0:
        assert status is not None
        load = (status.queue_depth, status.running_requests, status.kv_cache_usage)
        # A target that reports no load at all goes after those whose load is known.
        return (0, load == _NO_LOAD, load[0] or 0.0, max(load[1] or 0.0, busy), load[2] or 0.0,
                -target.weight)
    if tier == 2:
        facts = model_facts(target, status)
        position, since = facts.get("queue_position"), facts.get("since")
        return (2, 0, position if isinstance(position, (int, float)) else _INF,
                since if isinstance(since, (int, float)) else _INF, 0.0, -target.weight)
    return (tier, 0, 0.0, 0.0, 0.0, -target.weight)


_NO_LOAD = (None, None, None)


def order(candidates: Sequence[Target], statuses: Mapping[str, Status], *,
          cooled: Collection[str] = (), busy: Mapping[str, int] = _IDLE,
          turn: int = 0) -> list[Target]:
    """``candidates`` best first; equals rotated by ``turn`` (see the module's docstring).

    ``cooled`` holds the keys of the targets cooled down now, ``busy`` the calls this gateway
    has running at each (by key).
    """
    ranked = sorted(((rank(t, statuses.get(t.key), t.key in cooled, busy.get(t.key, 0)), t)
                     for t in candidates), key=lambda pair: pair[0])
    found: list[Target] = []
    for _, equal in groupby(ranked, key=lambda pair: pair[0]):
        group = [target for _, target in equal]
        if len(group) > 1:
            at = turn % len(group)
            group = group[at:] + group[:at]
        found.extend(group)
    return found


@hookimpl(tryfirst=True)
def select_target(model: str, candidates: Sequence[Target], statuses: Mapping[str, Status],
                  gateway: Gateway) -> list[Target]:
    if len(candidates) < 2:
        return list(candidates)
    turns: dict[str, int] | None = gateway.state.get(_STATE)
    if turns is None:
        turns = gateway.state[_STATE] = {}
    turn = turns[model] = turns.get(model, -1) + 1
    health = gateway.health
    return order(candidates, statuses, cooled=health.cooled(), busy=health.busy, turn=turn)
