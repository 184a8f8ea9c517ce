"""The poller against fake ``qstat``, ``pbsnodes``, ``squeue`` and ``sinfo`` executables on PATH,
whose answers the tests switch while it runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from first_pbs_status.commands import CommandResult, LocalRunner
from first_pbs_status.poller import ClusterPoller, StatusPoller
from first_pbs_status.settings import ClusterSettings, read_clusters

from first_proxy.config import parse_config
from first_proxy.testing import FakeScheduler, eventually

DATA = Path(__file__).parent / "data"
#: As the default job_name_pattern reads the job names: without "first-".
LLAMA_8B, LLAMA_70B = "Meta-Llama-3.1-8B-Instruct", "Meta-Llama-3.1-70B-Instruct"


def read(name: str) -> str:
    return (DATA / name).read_text()


def clusters(**entries: dict[str, Any]) -> list[ClusterSettings]:
    found, problems = read_clusters(parse_config({"clusters": entries}))
    assert problems == []
    return found


@pytest.fixture
def scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    fake = FakeScheduler(tmp_path / "scheduler")
    monkeypatch.setenv("PATH", fake.path)
    return fake


async def test_the_poller_follows_the_scheduler_and_outlives_its_failures(
        scheduler: FakeScheduler) -> None:
    scheduler.answer("qstat", read("qstat-2022.1-running.json"))
    scheduler.answer("pbsnodes", read("pbsnodes-2022.1.json"))
    seen = []
    poller = StatusPoller(clusters(polaris={"status": "pbs", "poll_interval": 0.05,
                                            "timezone": "America/Chicago"}),
                          on_update=seen.append)

    def state(model: str) -> str | None:
        snapshot = poller.snapshot("polaris")
        found = snapshot.models.get(model) if snapshot is not None else None
        return found.state if found is not None else None

    def error() -> str | None:
        snapshot = poller.snapshot("polaris")
        return snapshot.error if snapshot is not None else None

    async with poller:
        await eventually(lambda: state(LLAMA_8B) == "running")
        snapshot = poller.snapshot("polaris")
        assert snapshot is not None and snapshot.reachable and snapshot.free_nodes == 3
        assert snapshot.version == "PBS 2022.1.1.20220926110806"

        scheduler.answer("qstat", read("qstat-2022.1-queued-held.json"))
        await eventually(lambda: state(LLAMA_70B) == "queued")
        assert state(LLAMA_8B) is None

        scheduler.answer("qstat", exit_status=1,
                         stderr="qstat: cannot connect to server polaris-pbs-01 (errno=15010)\n")
        assert await eventually(error) == ("`qstat -f -F json` exited with status 1: qstat: "
                                           "cannot connect to server polaris-pbs-01 (errno=15010)")
        unknown = poller.snapshot("polaris")
        assert unknown is not None and not unknown.reachable and unknown.models == {}

        scheduler.answer("qstat", "<html><body>502 Bad Gateway</body></html>\n")
        assert "printed no JSON; it begins '<html>" in await eventually(
            lambda: (error() or "").startswith("`qstat -f -F json` printed") and error())

        scheduler.answer("qstat", read("qstat-2022.1-truncated.json"))
        await eventually(lambda: "ends in the middle of its JSON" in (error() or ""))

        scheduler.answer("qstat", read("qstat-2022.1-running.json"))
        await eventually(lambda: state(LLAMA_8B) == "running")  # back, by itself
    assert scheduler.calls("qstat")[0].argv == ["-f", "-F", "json"]
    assert scheduler.calls("pbsnodes")[0].argv == ["-a", "-F", "json"]
    assert seen[-1] is poller.snapshot("polaris")


async def test_a_scheduler_that_does_not_answer_in_time(scheduler: FakeScheduler) -> None:
    scheduler.answer("squeue", read("squeue-24.05-v0.0.41.json"), delay=60)
    scheduler.answer("sinfo", read("sinfo-24.05-v0.0.41.json"))
    poller = StatusPoller(clusters(sophia={"status": "slurm", "poll_interval": 0.05,
                                           "timeout": 0.3}))
    async with poller:
        await eventually(lambda: len(scheduler.calls("squeue")) >= 2)  # it went on polling
        snapshot = poller.snapshot("sophia")
        assert snapshot is not None and not snapshot.reachable
        assert snapshot.error == "`squeue --json` did not finish within 0.3 s"


async def test_slurm_jobs_and_free_nodes(scheduler: FakeScheduler) -> None:
    scheduler.answer("squeue", read("squeue-23.11-v0.0.40.json"))
    scheduler.answer("sinfo", read("sinfo-24.05-v0.0.41.json"))
    settings, = clusters(sophia={"status": "slurm",
                                 "squeue_command": ["squeue", "--json=v0.0.40"]})
    poller = ClusterPoller(settings, LocalRunner())
    snapshot = await poller.poll()
    assert snapshot.reachable and snapshot.free_nodes == 2
    assert snapshot.models[LLAMA_70B].queue_position == 1
    assert scheduler.calls("squeue")[0].argv == ["--json=v0.0.40"]

    scheduler.answer("sinfo", exit_status=1, stderr="sinfo: error: Invalid user for SlurmUser\n")
    snapshot = await poller.poll()
    assert snapshot.reachable and snapshot.free_nodes is None  # the jobs are still known
    assert snapshot.free_nodes_error == ("`sinfo --json` exited with status 1: sinfo: error: "
                                         "Invalid user for SlurmUser")
    assert snapshot.status().detail["free_nodes_error"] == snapshot.free_nodes_error


async def test_a_command_that_is_not_there(scheduler: FakeScheduler) -> None:
    settings, = clusters(polaris={"status": "pbs", "pbsnodes_command": [],
                                  "qstat_command": ["no-such-qstat", "-f", "-F", "json"]})
    snapshot = await StatusPoller([settings]).refresh("polaris")
    assert snapshot.error == ("cannot run `no-such-qstat -f -F json`: No such file or "
                              "directory")


async def test_no_free_node_query_when_switched_off(scheduler: FakeScheduler) -> None:
    scheduler.answer("qstat", read("qstat-2022.1-empty.json"))
    settings, = clusters(polaris={"status": "pbs", "pbsnodes_command": []})
    snapshot = await StatusPoller([settings]).refresh("polaris")
    assert snapshot.reachable and snapshot.models == {} and snapshot.free_nodes is None
    assert scheduler.calls("pbsnodes") == []


class BrokenRunner:
    """A runner that fails in a way no runner should: the poller must survive it."""

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
                  time_limit: float) -> CommandResult:
        raise RuntimeError("the remote function raised KeyError: 'stdout'")


async def test_an_unexpected_failure_makes_the_cluster_unknown(
        caplog: pytest.LogCaptureFixture) -> None:
    settings, = clusters(polaris={"status": "pbs"})
    poller = StatusPoller([settings], runner_for=lambda _: BrokenRunner())
    snapshot = await poller.refresh("polaris")
    assert not snapshot.reachable
    assert snapshot.error == ("could not read the scheduler's answer: RuntimeError: the remote "
                              "function raised KeyError: 'stdout'")
    assert "reading the scheduler of cluster polaris failed" in caplog.text
