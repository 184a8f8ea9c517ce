"""first-proxy cluster status from PBS Pro and Slurm, and cold starts of models.

For each ``clusters:`` entry with ``status: pbs`` or ``status: slurm`` the plugin asks the
scheduler every ``poll_interval`` seconds which jobs run or wait, tells which job serves which
model, and reports that as the status of every target on the cluster. A cluster with
``cold_start`` may submit the job that starts a model that runs nowhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import click

from first_proxy import Gateway, GatewayConfig, Status, Target, hookimpl
from first_proxy.errors import ConfigError
from first_proxy.status import state_of

from .claims import MIGRATIONS, Claims, MemoryClaims, StoreClaims
from .cli import status_command
from .coldstart import ColdStart, ColdStarter
from .commands import CommandResult, CommandRunner, ComputeRunner, LocalRunner
from .jobs import Snapshot
from .poller import StatusPoller
from .settings import ClusterSettings, check_files, read_clusters

NAME = "first_pbs_status"

__all__ = [
    "NAME",
    "Claims",
    "ColdStart",
    "ColdStarter",
    "CommandResult",
    "CommandRunner",
    "LocalRunner",
    "MemoryClaims",
    "Running",
    "Snapshot",
    "StatusPoller",
    "StoreClaims",
    "running",
]


@dataclass(frozen=True)
class Running:
    """What the plugin runs for one gateway, in ``gateway.state[NAME]``."""

    poller: StatusPoller
    cold_starts: ColdStarter


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Running]:
    """Poll the clusters of ``gateway``'s configuration for as long as the context is open."""
    clusters, problems = read_clusters(gateway.config)
    problems += [p for cluster in clusters for p in check_files(cluster)]
    if problems:
        raise ConfigError(gateway.config.source, problems)
    publish = lambda snapshot: gateway.push_status(snapshot.cluster, snapshot.status())  # noqa: E731
    # Claims in the store: of the gateway processes sharing it, one submits each cold start.
    claims = StoreClaims(gateway.store) if gateway.store is not None else None
    def runner_for(cluster: ClusterSettings) -> CommandRunner:
        if cluster.via == "globus_compute":
            assert cluster.endpoint is not None and cluster.status_function is not None
            return ComputeRunner(gateway, cluster.endpoint, cluster.status_function)
        return LocalRunner()

    async with StatusPoller(clusters, on_update=publish, runner_for=runner_for) as poller:
        state = gateway.state[NAME] = Running(poller, ColdStarter(poller, claims))
        try:
            yield state
        finally:
            del gateway.state[NAME]


@hookimpl
def check_config(config: GatewayConfig) -> list[tuple[str, str]]:
    return read_clusters(config)[1]


@hookimpl
def register_migrations(register: Callable[[str, Sequence[str]], None]) -> None:
    register(NAME, MIGRATIONS)


@hookimpl
def lifespan(gateway: Gateway) -> contextlib.AbstractAsyncContextManager[Running]:
    return running(gateway)


@hookimpl
def report_status(cluster: str, gateway: Gateway) -> Status | None:
    """The cluster's last snapshot, from the poller's cache: never a scheduler call here."""
    state: Running | None = gateway.state.get(NAME)
    if state is None or cluster not in state.poller.pollers:
        return None
    snapshot = state.poller.snapshot(cluster)
    if snapshot is None:
        scheduler = state.poller.pollers[cluster].settings.scheduler
        return Status(reachable=False, last_error="the scheduler has not answered its first "
                      "query yet", detail={"cluster": cluster, "scheduler": scheduler,
                                           "state": "unknown"})
    return snapshot.status()


@hookimpl
def select_target(model: str, candidates: Sequence[Target], statuses: Mapping[str, Status],
                  gateway: Gateway) -> Awaitable[None] | None:
    """The order as it is while a target may serve; when none may, a cold start: the model is
    started where it can be (once), and the caller gets a 503 saying where and how far."""
    state: Running | None = gateway.state.get(NAME)
    if state is None or not candidates:
        return None
    ours = state.poller.pollers
    for target in candidates:
        found = state_of(target, statuses.get(target.key))
        # Running, or not known otherwise on a cluster this plugin does not watch (a
        # provider's API, say): it is tried.
        if found == "running" or (found == "unknown" and target.cluster not in ours):
            return None
    return _cold_start(state.cold_starts, model, candidates, statuses)


async def _cold_start(starter: ColdStarter, model: str, candidates: Sequence[Target],
                      statuses: Mapping[str, Status]) -> None:
    start = await starter.start(model, candidates, statuses)
    if start is not None:
        raise start.as_error()


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(status_command)
