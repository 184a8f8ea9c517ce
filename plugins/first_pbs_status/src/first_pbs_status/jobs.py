"""What a scheduler says, made uniform: jobs, the state of each model, a cluster's snapshot.

The parsers (:mod:`.pbs`, :mod:`.slurm`) turn a scheduler's JSON into :class:`Job` values;
:func:`summarize` tells which job serves which model and folds the jobs of each model into one
:class:`ModelState`; a :class:`Snapshot` is one poll of one cluster, and becomes the
:class:`first_proxy.Status` of every target on that cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from first_proxy import Status, Target

__all__ = [
    "FAILED",
    "HELD",
    "QUEUED",
    "RUNNING",
    "STARTING",
    "Job",
    "ModelNames",
    "ModelRules",
    "ModelState",
    "Snapshot",
    "duration",
    "summarize",
]

#: A job's state, as this plugin reports it; a job that ended is dropped by the parsers.
RUNNING, STARTING, QUEUED, HELD, FAILED = "running", "starting", "queued", "held", "failed"
#: Best first: the state a model gets from its best job.
_ORDER = {RUNNING: 0, STARTING: 1, QUEUED: 2, HELD: 3, FAILED: 4}


@dataclass(frozen=True, slots=True)
class Job:
    """One job, in any scheduler's terms."""

    id: str
    name: str
    state: str
    #: The queue (PBS) or partition (Slurm): queue positions are counted within it.
    queue: str = ""
    #: The user the job runs as.
    user: str = ""
    #: UNIX times; ``None`` when the scheduler does not say.
    submitted: float | None = None
    started: float | None = None
    expected_start: float | None = None
    nodes: int | None = None
    #: Higher runs first (Slurm); ``None`` where the order is by submission alone (PBS).
    priority: float | None = None
    #: The job's comment (PBS: the scheduler's; Slurm: the job's own ``--comment``).
    comment: str = ""
    #: Why it waits or what happened, in the scheduler's words.
    reason: str = ""
    #: Where a model can be named: PBS ``Variable_List`` entries; Slurm ``comment`` and the
    #: ``key=value`` pairs in it.
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelState:
    """A model on one cluster: the state of its best job and the facts about it."""

    state: str
    job_ids: tuple[str, ...]
    #: Running or starting: when its job started; queued, held or failed: when it was submitted.
    since: float | None = None
    nodes: int | None = None
    #: 1 for the next job to run in its queue; only for queued models.
    queue_position: int | None = None
    expected_start: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "jobs": list(self.job_ids), "since": self.since,
                "nodes": self.nodes, "queue_position": self.queue_position,
                "expected_start": self.expected_start, "reason": self.reason}


class ModelNames:
    """The names a job may give a model on one cluster, mapped to the name its targets use.

    A job names a model by its upstream name (``meta-llama/Meta-Llama-3.1-8B-Instruct``),
    its gateway name, or the part of either after the last ``/`` (PBS job names cannot hold a
    ``/``). Names no target uses are kept as they are.
    """

    def __init__(self, targets: Iterable[Target]) -> None:
        self._names: dict[str, str] = {}
        for target in targets:
            for name in (target.upstream_model, target.model):
                self._names.setdefault(name, target.upstream_model)
                self._names.setdefault(name.rsplit("/", 1)[-1], target.upstream_model)

    def resolve(self, name: str) -> str:
        return self._names.get(name, name)


@dataclass(frozen=True, slots=True)
class ModelRules:
    """How to tell which model a job serves, and when a running job's server is up."""

    job_name_pattern: re.Pattern[str]
    #: A job attribute holding the model's name; tried before the job name.
    model_attribute: str | None = None
    #: When set, only this user's jobs serve models.
    job_user: str | None = None
    #: A running job is ``starting`` for this many seconds after it started ...
    warm_up: float = 0.0
    #: ... and, when set, until its comment matches this.
    ready_comment: re.Pattern[str] | None = None

    def model_of(self, job: Job) -> str | None:
        if self.job_user is not None and job.user != self.job_user:
            return None
        if self.model_attribute is not None:
            value = job.attributes.get(self.model_attribute)
            if value:
                return value
        found = self.job_name_pattern.search(job.name)
        return found.group("model") if found and found.group("model") else None

    def state_of(self, job: Job, now: float) -> str:
        if job.state != RUNNING:
            return job.state
        if self.warm_up and job.started is not None and now - job.started < self.warm_up:
            return STARTING
        if self.ready_comment is not None and not self.ready_comment.search(job.comment):
            return STARTING
        return RUNNING


def queue_positions(jobs: Sequence[Job]) -> dict[str, int]:
    """Job id -> its place among the queued jobs of its queue: by priority, then age."""
    queues: dict[str, list[Job]] = {}
    for job in jobs:
        if job.state == QUEUED:
            queues.setdefault(job.queue, []).append(job)
    positions = {}
    for waiting in queues.values():
        waiting.sort(key=lambda j: (-(j.priority or 0.0), j.submitted or float("inf"), j.id))
        positions.update((job.id, i) for i, job in enumerate(waiting, 1))
    return positions


def summarize(jobs: Sequence[Job], rules: ModelRules, names: ModelNames,
              now: float) -> dict[str, ModelState]:
    """Each model the jobs serve -> its state; jobs that serve no model only count in queues."""
    positions = queue_positions(jobs)
    by_model: dict[str, list[tuple[str, Job]]] = {}
    for job in jobs:
        model = rules.model_of(job)
        if model is not None:
            by_model.setdefault(names.resolve(model), []).append((rules.state_of(job, now), job))
    models = {}
    for model, found in by_model.items():
        found.sort(key=lambda pair: (_ORDER[pair[0]], positions.get(pair[1].id, 0),
                                     pair[1].submitted or 0.0))
        state, best = found[0]
        same = [job for s, job in found if s == state]
        active = state in (RUNNING, STARTING)
        models[model] = ModelState(
            state=state,
            job_ids=tuple(job.id for _, job in found),
            since=best.started if active else best.submitted,
            nodes=(sum(job.nodes or 0 for job in same) or None) if active else best.nodes,
            queue_position=positions.get(best.id),
            expected_start=best.expected_start if state == QUEUED else None,
            reason=best.reason,
        )
    return models


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll of one cluster; ``error`` set (and ``reachable`` false) when it failed."""

    cluster: str
    scheduler: str
    checked_at: float
    reachable: bool
    models: Mapping[str, ModelState] = field(default_factory=dict)
    free_nodes: int | None = None
    #: Why the free nodes are not known, when the scheduler answered but the node query failed.
    free_nodes_error: str | None = None
    #: The scheduler's version, as its output says it.
    version: str = ""
    error: str | None = None

    def status(self) -> Status:
        """The :class:`first_proxy.Status` of every target on this cluster."""
        detail: dict[str, Any] = {
            "cluster": self.cluster, "scheduler": self.scheduler,
            "state": "up" if self.reachable else "unknown", "version": self.version,
            "free_nodes": self.free_nodes,
            "models": {name: state.as_dict() for name, state in self.models.items()},
        }
        if self.free_nodes_error:
            detail["free_nodes_error"] = self.free_nodes_error
        return Status(reachable=self.reachable,
                      models={name: state.state for name, state in self.models.items()},
                      last_error=self.error, checked_at=self.checked_at, detail=detail)


def duration(seconds: float) -> str:
    """``42 s``, ``5 min``, ``2 h 5 min``, ``3 d 4 h``: an age or a wait, for people."""
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h {minutes % 60} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"
