"""Asking each cluster's scheduler every ``poll_interval`` seconds, and keeping the answers.

A scheduler that cannot be reached, times out, exits non-zero or prints something unreadable
makes its cluster's :class:`~.jobs.Snapshot` unknown, with the reason; the poller goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import tzinfo
from zoneinfo import ZoneInfo

from .commands import CommandError, CommandRunner, LocalRunner, shown
from .jobs import Job, Snapshot, summarize
from .pbs import parse_pbsnodes, parse_qstat
from .reading import OutputError
from .settings import ClusterSettings
from .slurm import parse_sinfo, parse_squeue

__all__ = ["ClusterPoller", "StatusPoller"]

log = logging.getLogger("first_pbs_status")


class ClusterPoller:
    """One cluster: runs its scheduler's queries and reads them into a :class:`Snapshot`."""

    def __init__(self, settings: ClusterSettings, runner: CommandRunner, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.runner = runner
        self._clock = clock
        self._tz: tzinfo | None = ZoneInfo(settings.timezone) if settings.timezone else None

    async def poll(self) -> Snapshot:
        """A snapshot of the cluster now; never raises but for cancellation."""
        now = self._clock()
        try:
            return await self._poll(now)
        except (CommandError, OutputError) as e:
            return self._unknown(now, str(e))
        except Exception as e:  # a bug here must not stop the poller
            log.exception("reading the scheduler of cluster %s failed", self.settings.name)
            return self._unknown(now, f"could not read the scheduler's answer: "
                                      f"{type(e).__name__}: {e}")

    async def _poll(self, now: float) -> Snapshot:
        s = self.settings
        nodes = asyncio.create_task(self._free_nodes()) if s.nodes_command else None
        try:
            text = await self._output(s.jobs_command)
            jobs, version = await asyncio.to_thread(self._read_jobs, text)
        except BaseException:
            if nodes is not None:
                nodes.cancel()
            raise
        free, free_error = await nodes if nodes is not None else (None, None)
        return Snapshot(
            cluster=s.name, scheduler=s.scheduler, checked_at=now, reachable=True,
            models=summarize(jobs, s.rules, s.names, now), free_nodes=free,
            free_nodes_error=free_error, version=version)

    def _read_jobs(self, text: str) -> tuple[list[Job], str]:
        what = f"`{shown(self.settings.jobs_command)}`"
        if self.settings.scheduler == "pbs":
            return parse_qstat(text, tz=self._tz, what=what)
        return parse_squeue(text, what=what)

    async def _free_nodes(self) -> tuple[int | None, str | None]:
        argv = self.settings.nodes_command
        assert argv is not None
        parse = parse_pbsnodes if self.settings.scheduler == "pbs" else parse_sinfo
        try:
            text = await self._output(argv)
            return await asyncio.to_thread(parse, text, what=f"`{shown(argv)}`"), None
        except (CommandError, OutputError) as e:
            return None, str(e)

    async def _output(self, argv: Sequence[str]) -> str:
        result = await self.runner.run(argv, time_limit=self.settings.timeout)
        if result.exit_status != 0:
            raise CommandError(f"`{shown(argv)}` exited with status {result.exit_status}: "
                               f"{result.complaint()}")
        return result.stdout.decode("utf-8", "replace")

    def _unknown(self, now: float, reason: str) -> Snapshot:
        return Snapshot(cluster=self.settings.name, scheduler=self.settings.scheduler,
                        checked_at=now, reachable=False, error=reason)


class StatusPoller:
    """Polls every cluster on its own timer; an async context manager that runs the timers.

    ``runner_for`` gives each cluster its :class:`CommandRunner` (by default, commands run
    here). ``on_update`` is called with each new snapshot.
    """

    def __init__(self, clusters: Sequence[ClusterSettings], *,
                 runner_for: Callable[[ClusterSettings], CommandRunner] = lambda _: LocalRunner(),
                 on_update: Callable[[Snapshot], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pollers = {c.name: ClusterPoller(c, runner_for(c), clock=clock) for c in clusters}
        self.snapshots: dict[str, Snapshot] = {}
        self._on_update = on_update
        self._locks = {name: asyncio.Lock() for name in self.pollers}
        self._tasks: list[asyncio.Task[None]] = []

    def snapshot(self, cluster: str) -> Snapshot | None:
        """The latest snapshot of ``cluster``; ``None`` before its first poll has finished."""
        return self.snapshots.get(cluster)

    async def refresh(self, cluster: str) -> Snapshot:
        """Poll ``cluster`` now (after the poll in progress, if any) and keep the answer."""
        async with self._locks[cluster]:
            snapshot = await self.pollers[cluster].poll()
            self.snapshots[cluster] = snapshot
        if snapshot.error:
            log.warning("cluster %s: scheduler status unknown: %s", cluster, snapshot.error)
        if self._on_update is not None:
            try:
                self._on_update(snapshot)
            except Exception:
                log.exception("handling the status of cluster %s failed", cluster)
        return snapshot

    async def _every(self, cluster: str) -> None:
        interval = self.pollers[cluster].settings.poll_interval
        while True:
            await self.refresh(cluster)
            await asyncio.sleep(interval)

    async def __aenter__(self) -> StatusPoller:
        self._tasks = [asyncio.create_task(self._every(name), name=f"first-pbs-status-{name}")
                       for name in self.pollers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
