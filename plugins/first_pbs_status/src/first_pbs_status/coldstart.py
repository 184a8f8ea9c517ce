"""Cold starts: submitting the job that starts a model when it runs nowhere.

A cluster with ``cold_start.template`` may start the models it serves. No second job is
submitted for a model on a cluster while one is submitted, queued or starting there, however
many requests ask at once: within a process, one submission per model runs at a time and the
others wait for its outcome; across gateway processes, a submission first takes a
:class:`~.claims.Claims` entry for the model and cluster, kept in the store the processes
share (:class:`~.claims.StoreClaims`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from first_proxy import Status, Target
from first_proxy.errors import NoTargetAvailable

from .claims import Claims, MemoryClaims
from .commands import CommandError, shown
from .jobs import FAILED, HELD, QUEUED, RUNNING, STARTING, ModelState, duration
from .poller import StatusPoller
from .settings import ClusterSettings

__all__ = ["ColdStart", "ColdStarter", "parse_job_id", "render"]

log = logging.getLogger("first_pbs_status")

SUBMITTED = "submitted"
_ORDER = {STARTING: 0, SUBMITTED: 1, QUEUED: 2, HELD: 3}


@dataclass(frozen=True, slots=True)
class ColdStart:
    """Where a model that runs nowhere is starting, for a 503 answer with ``Retry-After``."""

    model: str
    cluster: str
    #: ``submitted`` (its job is not listed by the scheduler yet), ``queued``, ``held``,
    #: ``starting``, or ``failed`` (its last job failed, or submitting one did).
    state: str
    job_id: str | None = None
    queue_position: int | None = None
    #: Queued or held: when the job was submitted; starting: when it started.
    since: float | None = None
    expected_start: float | None = None
    reason: str = ""
    #: Seconds to wait before retrying.
    retry_after: float = 60.0
    #: Whether this call submitted the job.
    submitted: bool = False

    def message(self, now: float | None = None) -> str:
        """What to tell the caller: where the model is starting, how far, and what to do."""
        now = time.time() if now is None else now
        job = f"job {self.job_id}" if self.job_id else ""
        on = f"on {self.cluster}"
        if self.state == HELD:
            because = f" ({self.reason})" if self.reason else ""
            return (f"{self.model} cannot start {on} yet: {job or 'its job'} is held{because}. "
                    "Ask the administrator to release it.")
        if self.state == FAILED:
            because = ": ".join(part for part in (job, self.reason) if part)
            return (f"{self.model} is not running, and starting it {on} failed"
                    f"{f' ({because})' if because else ''}. Ask the administrator to look at it.")
        if self.state == QUEUED:
            where = f"position {self.queue_position} in its queue, " if self.queue_position else ""
            expected = (f", expected to start in {_age(now, self.expected_start)}"
                        if self.expected_start else "")
            text = (f"{self.model} is starting {on}: {job or 'its job'} is queued ({where}waiting "
                    f"{_age(self.since, now)}{expected})")
        elif self.state == STARTING:
            text = (f"{self.model} is starting {on}: {job or 'its job'} has run for "
                    f"{_age(self.since, now)} and the model is loading")
        else:
            text = f"{self.model} is not running yet: {job or 'a job'} was submitted {on} to start it"
        return (f"{text}. Retry in {round(self.retry_after)} s; GET "
                f"/resource_server/{self.cluster}/jobs shows its progress.")

    def as_error(self) -> NoTargetAvailable:
        """The 503 to answer with: this message, ``Retry-After``, code ``model_starting``."""
        return NoTargetAvailable(self.message(), code="model_starting" if self.state != FAILED
                                 else "model_start_failed",
                                 headers={"Retry-After": str(max(1, round(self.retry_after)))})


@dataclass(frozen=True, slots=True)
class _Pending:
    start: ColdStart
    at: float
    until: float


class ColdStarter:
    """Starts models on the clusters a :class:`StatusPoller` watches, one job at a time."""

    def __init__(self, poller: StatusPoller, claims: Claims | None = None, *,
                 owner: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.poller = poller
        self.claims: Claims = claims if claims is not None else MemoryClaims()
        self.owner = owner or uuid.uuid4().hex
        self._clock = clock
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: (cluster, model) -> a job submitted here that the scheduler does not list yet,
        #: or a submission that failed (not tried again until its retry_after is over).
        self._pending: dict[tuple[str, str], _Pending] = {}

    async def start(self, model: str, targets: Sequence[Target],
                    statuses: Mapping[str, Status]) -> ColdStart | None:
        """Make sure ``model`` is on its way somewhere, given its ``targets``.

        ``None`` when one of them runs the model already, or none of them can start it.
        Otherwise where it is starting: a job already queued or starting, or one this call
        (or a concurrent one) submitted. ``statuses`` (by :attr:`Target.key`) tell about the
        targets on other clusters.
        """
        if any(self._running(t, statuses) for t in targets):
            return None
        ours = [t for t in targets if t.cluster in self.poller.pollers]
        found = self._on_its_way(ours)
        if found is not None:
            return found
        async with self._locks[model]:
            found = self._on_its_way(ours)
            if found is not None:
                return found
            sites = [t for t in ours if self._can_start(t)]
            if not sites:
                return self._failed(ours)
            sites.sort(key=lambda t: -(self._snapshot_free(t.cluster) or 0))
            return await self._submit(sites[0])

    # -- what the clusters say ------------------------------------------------------------

    def _state(self, target: Target) -> ModelState | None:
        snapshot = self.poller.snapshot(target.cluster)
        if snapshot is None or not snapshot.reachable:
            return None
        return snapshot.models.get(target.upstream_model)

    def _running(self, target: Target, statuses: Mapping[str, Status]) -> bool:
        if target.cluster in self.poller.pollers:
            state = self._state(target)
            return state is not None and state.state == RUNNING
        status = statuses.get(target.key)
        return (status is not None and status.reachable
                and (not status.models or status.models.get(target.upstream_model) == RUNNING))

    def _on_its_way(self, targets: Sequence[Target]) -> ColdStart | None:
        """The most advanced job for the model among ``targets``: starting, queued, held."""
        found = []
        for target in targets:
            settings = self.poller.pollers[target.cluster].settings
            pending = self._pending_at(target)
            if pending is not None and pending.state != FAILED:
                found.append(pending)
                continue
            state = self._state(target)
            if state is not None and state.state in _ORDER:
                retry = settings.cold_start.retry_after if settings.cold_start else 60.0
                found.append(_from_state(target, state, retry))
        found.sort(key=lambda s: (_ORDER[s.state], s.queue_position or 0))
        return found[0] if found else None

    def _pending_at(self, target: Target) -> ColdStart | None:
        key = (target.cluster, target.upstream_model)
        pending = self._pending.get(key)
        if pending is None:
            return None
        snapshot = self.poller.snapshot(target.cluster)
        listed = (snapshot is not None and snapshot.checked_at > pending.at
                  and target.upstream_model in snapshot.models)
        if self._clock() >= pending.until or (listed and pending.start.state != FAILED):
            del self._pending[key]
            return None
        return pending.start

    def _can_start(self, target: Target) -> bool:
        settings = self.poller.pollers[target.cluster].settings
        snapshot = self.poller.snapshot(target.cluster)
        cold = settings.cold_start
        return (cold is not None and snapshot is not None and snapshot.reachable
                and (not cold.models or target.upstream_model in cold.models)
                and target.upstream_model not in snapshot.models
                and self._pending_at(target) is None)

    def _failed(self, targets: Sequence[Target]) -> ColdStart | None:
        for target in targets:
            pending = self._pending_at(target)
            if pending is not None:
                return pending
            state = self._state(target)
            settings = self.poller.pollers[target.cluster].settings
            if state is not None and state.state == FAILED and settings.cold_start is not None:
                return _from_state(target, state, settings.cold_start.retry_after)
        return None

    def _snapshot_free(self, cluster: str) -> int | None:
        snapshot = self.poller.snapshot(cluster)
        return snapshot.free_nodes if snapshot is not None else None

    # -- submitting -----------------------------------------------------------------------

    async def _submit(self, target: Target) -> ColdStart:
        settings = self.poller.pollers[target.cluster].settings
        cold = settings.cold_start
        assert cold is not None
        model, now = target.upstream_model, self._clock()
        start = ColdStart(model=model, cluster=settings.name, state=SUBMITTED,
                          retry_after=cold.retry_after)
        key = f"{settings.name}/{model}"
        if not await self.claims.claim(key, self.owner, cold.claim_ttl):
            # Another gateway process submitted it. Until the scheduler lists the job, this
            # one answers so without asking the store again for ``retry_after`` seconds.
            self._pending[(settings.name, model)] = _Pending(start, now, now + cold.retry_after)
            return start
        try:
            job_id = await self._run_submit(settings, model)
        except (OSError, CommandError, ValueError) as e:
            await self.claims.release(key, self.owner)
            log.warning("starting %s on %s failed: %s", model, settings.name, e)
            failed = replace(start, state=FAILED, reason=str(e))
            self._pending[(settings.name, model)] = _Pending(failed, now, now + cold.retry_after)
            return failed
        log.info("submitted job %s on %s to start %s", job_id, settings.name, model)
        start = replace(start, job_id=job_id, since=now)
        self._pending[(settings.name, model)] = _Pending(start, now, now + cold.claim_ttl)
        return replace(start, submitted=True)

    async def _run_submit(self, settings: ClusterSettings, model: str) -> str:
        assert settings.cold_start is not None
        script = await asyncio.to_thread(render, settings.cold_start.template, model)
        argv = settings.submit_command
        runner = self.poller.pollers[settings.name].runner
        result = await runner.run(argv, stdin=script.encode(), time_limit=settings.timeout)
        if result.exit_status != 0:
            raise CommandError(f"`{shown(argv)}` exited with status {result.exit_status}: "
                               f"{result.complaint()}")
        return parse_job_id(settings.scheduler, result.stdout.decode("utf-8", "replace"),
                            shown(argv))


def _from_state(target: Target, state: ModelState, retry_after: float) -> ColdStart:
    return ColdStart(model=target.upstream_model, cluster=target.cluster, state=state.state,
                     job_id=state.job_ids[0] if state.job_ids else None,
                     queue_position=state.queue_position, since=state.since,
                     expected_start=state.expected_start, reason=state.reason,
                     retry_after=retry_after)


def render(template: Path, model: str) -> str:
    """The job script: ``template`` with ``{model}`` and ``{model_basename}`` filled in.

    Nothing else in it changes, so the script's own ``${VAR}`` and braces stay as written.
    """
    text = template.read_text()
    return text.replace("{model_basename}", model.rsplit("/", 1)[-1]).replace("{model}", model)


_PBS_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[\w.-]+)?$")
_SLURM_ID = re.compile(r"^Submitted batch job (\d+)|^(\d+)(?:;\S+)?$", re.MULTILINE)


def parse_job_id(scheduler: str, output: str, what: str) -> str:
    """The job id in what ``qsub`` (``1234.server``) or ``sbatch`` (``Submitted batch job
    1234``, or ``1234`` with ``--parsable``) printed."""
    if scheduler == "pbs":
        for line in output.splitlines():
            if _PBS_ID.match(line.strip()):
                return line.strip()
    else:
        found = _SLURM_ID.search(output)
        if found:
            return found.group(1) or found.group(2)
    first = output.strip().splitlines()[0][:120] if output.strip() else "nothing"
    raise ValueError(f"`{what}` printed no job id; it printed {first!r}")


def _age(since: float | None, now: float) -> str:
    return "a while" if since is None else duration(now - since)
