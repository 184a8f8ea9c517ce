"""Cold starts through fake ``qsub`` and ``sbatch`` executables: one job, however many ask."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from first_pbs_status.claims import MemoryClaims
from first_pbs_status.coldstart import ColdStart, ColdStarter, parse_job_id
from first_pbs_status.poller import StatusPoller
from first_pbs_status.settings import read_clusters

from first_proxy import OPENAI, Status, Target
from first_proxy.config import parse_config
from first_proxy.testing import FakeScheduler

DATA = Path(__file__).parent / "data"
MODEL = "meta-llama/Meta-Llama-3.1-70B-Instruct"
TEMPLATE = """#!/bin/bash
#PBS -N first-{model_basename}
#PBS -l select=4:ngpus=4,walltime=06:00:00
#PBS -q prod
export HF_HOME=${HOME}/hf
vllm serve {model} --tensor-parallel-size 4 --port 8000
"""
NO_JOBS = (DATA / "qstat-2022.1-empty.json").read_text()


def target(cluster: str = "polaris", name: str | None = None, **options: Any) -> Target:
    return Target(name=name or cluster, model=MODEL, backend="reference",
                  upstream_model=MODEL, cluster=cluster, **options)


@pytest.fixture
def scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    fake = FakeScheduler(tmp_path / "scheduler")
    monkeypatch.setenv("PATH", fake.path)
    fake.answer("pbsnodes", (DATA / "pbsnodes-2022.1.json").read_text())
    fake.answer("qstat", NO_JOBS)
    # Slow enough that every concurrent caller arrives while the first submission runs.
    fake.answer("qsub", "8400.polaris-pbs-01\n", delay=0.3)
    return fake


def gateway_config(tmp_path: Path, **cold_start: Any) -> Any:
    template = tmp_path / "start-model.pbs"
    template.write_text(TEMPLATE)
    return parse_config({
        "clusters": {"polaris": {"status": "pbs", "poll_interval": 3600,
                                 "cold_start": {"template": str(template), **cold_start}}},
        "models": {MODEL: {"targets": [{"name": "polaris", "backend": "reference",
                                        "cluster": "polaris"}]}},
    })


@pytest.fixture
async def poller(tmp_path: Path, scheduler: FakeScheduler) -> AsyncIterator[StatusPoller]:
    clusters, problems = read_clusters(gateway_config(tmp_path))
    assert problems == []
    async with StatusPoller(clusters) as running:
        await running.refresh("polaris")
        yield running


async def test_twenty_concurrent_requests_submit_one_job(
        poller: StatusPoller, scheduler: FakeScheduler) -> None:
    starter = ColdStarter(poller)
    answers = await asyncio.gather(*(starter.start(MODEL, [target()], {}) for _ in range(20)))
    assert len(scheduler.calls("qsub")) == 1
    assert scheduler.calls("qsub")[0].stdin == TEMPLATE.replace(
        "{model_basename}", "Meta-Llama-3.1-70B-Instruct").replace("{model}", MODEL)
    assert sum(a.submitted for a in answers) == 1
    assert {(a.cluster, a.state, a.job_id) for a in answers} == {
        ("polaris", "submitted", "8400.polaris-pbs-01")}
    first, = (a for a in answers if a.submitted)
    assert first.message() == (
        f"{MODEL} is not running yet: job 8400.polaris-pbs-01 was submitted on polaris to start "
        "it. Retry in 60 s; GET /resource_server/polaris/jobs shows its progress.")

    # The scheduler lists the job: callers hear where it waits, and still no second job.
    scheduler.answer("qstat", (DATA / "qstat-2022.1-queued-held.json").read_text())
    await poller.refresh("polaris")
    answers = await asyncio.gather(*(starter.start(MODEL, [target()], {}) for _ in range(20)))
    assert len(scheduler.calls("qsub")) == 1
    queued, = set(answers)
    assert (queued.state, queued.queue_position, queued.submitted) == ("queued", 2, False)
    assert queued.job_id == "8202.polaris-pbs-01.example.org"


async def test_two_gateway_processes_sharing_claims_submit_one_job(
        poller: StatusPoller, scheduler: FakeScheduler) -> None:
    claims = MemoryClaims()  # what a store shared by the processes would hold
    one, two = ColdStarter(poller, claims), ColdStarter(poller, claims)
    answers = await asyncio.gather(*(starter.start(MODEL, [target()], {})
                                     for _ in range(10) for starter in (one, two)))
    assert len(scheduler.calls("qsub")) == 1
    assert {a.state for a in answers} == {"submitted"}
    assert sum(a.submitted for a in answers) == 1
    # The process that lost the claim does not know the job's id, only that it is on its way.
    elsewhere = next(a for a in answers if a.job_id is None)
    assert elsewhere.message() == (
        f"{MODEL} is not running yet: a job was submitted on polaris to start it. Retry in "
        "60 s; GET /resource_server/polaris/jobs shows its progress.")


async def test_nothing_is_submitted_for_a_model_that_runs(
        poller: StatusPoller, scheduler: FakeScheduler) -> None:
    starter = ColdStarter(poller)
    elsewhere = target("cloud")
    up = {elsewhere.key: Status(reachable=True, models={MODEL: "running"})}
    assert await starter.start(MODEL, [target(), elsewhere], up) is None
    running = (DATA / "qstat-2022.1-queued-held.json").read_text().replace(
        '"job_state":"Q"', '"job_state":"R"')
    scheduler.answer("qstat", running)
    await poller.refresh("polaris")
    assert await starter.start(MODEL, [target()], {}) is None
    assert scheduler.calls("qsub") == []


async def test_a_held_job_is_reported_not_replaced(
        tmp_path: Path, scheduler: FakeScheduler) -> None:
    scheduler.answer("qstat", (DATA / "qstat-2022.1-queued-held.json").read_text())
    clusters, _ = read_clusters(gateway_config(tmp_path))
    qwen = Target(name="polaris", model="qwen", backend="reference",
                  upstream_model="Qwen2.5-72B-Instruct", cluster="polaris")
    poller = StatusPoller(clusters)
    await poller.refresh("polaris")
    start = await ColdStarter(poller).start("qwen", [qwen], {})
    assert start is not None and start.state == "held"
    assert start.message() == (
        "Qwen2.5-72B-Instruct cannot start on polaris yet: job 8203.polaris-pbs-01.example.org is "
        "held (Job held by svcfirst on Tue Jan  6 03:40:00 2026). Ask the "
        "administrator to release it.")
    assert scheduler.calls("qsub") == []


async def test_a_failed_submission_is_not_retried_at_once(
        poller: StatusPoller, scheduler: FakeScheduler) -> None:
    scheduler.answer("qsub", exit_status=1, stderr="qsub: Unknown queue\n")
    starter = ColdStarter(poller)
    first = await starter.start(MODEL, [target()], {})
    again = await starter.start(MODEL, [target()], {})
    assert first == again and first is not None
    assert (first.state, first.reason) == ("failed", "`qsub` exited with status 1: qsub: "
                                                     "Unknown queue")
    assert first.message() == (
        f"{MODEL} is not running, and starting it on polaris failed (`qsub` exited "
        "with status 1: qsub: Unknown queue). Ask the administrator to look at it.")
    assert len(scheduler.calls("qsub")) == 1


async def test_a_job_that_failed_is_not_resubmitted(
        tmp_path: Path, scheduler: FakeScheduler) -> None:
    scheduler.answer("qstat", (DATA / "qstat-2022.1-history.json").read_text())
    clusters, _ = read_clusters(gateway_config(tmp_path))
    mistral = Target(name="polaris", model="mistral", backend="reference",
                     upstream_model="Mistral-7B-Instruct-v0.3", cluster="polaris")
    poller = StatusPoller(clusters)
    await poller.refresh("polaris")
    start = await ColdStarter(poller).start("mistral", [mistral], {})
    assert start is not None and (start.state, start.job_id) == (
        "failed", "8050.polaris-pbs-01.example.org")
    assert scheduler.calls("qsub") == []


async def test_only_the_models_listed_may_be_started(
        tmp_path: Path, scheduler: FakeScheduler) -> None:
    other = Target(name="polaris", model="other", backend="reference", upstream_model="other",
                   cluster="polaris")
    config = gateway_config(tmp_path, models=[MODEL])
    clusters, problems = read_clusters(config)
    assert problems == []
    poller = StatusPoller(clusters)
    await poller.refresh("polaris")
    assert await ColdStarter(poller).start("other", [other], {}) is None
    assert scheduler.calls("qsub") == []


async def test_slurm_cold_start(tmp_path: Path, scheduler: FakeScheduler) -> None:
    scheduler.answer("squeue", (DATA / "squeue-23.11-v0.0.40-empty.json").read_text())
    scheduler.answer("sinfo", (DATA / "sinfo-24.05-v0.0.41.json").read_text())
    scheduler.answer("sbatch", "Submitted batch job 7001\n")
    template = tmp_path / "start.sbatch"
    template.write_text("#!/bin/bash\n#SBATCH --job-name=first-{model_basename}\n"
                        "vllm serve {model}\n")
    config = parse_config({
        "clusters": {"sophia": {"status": "slurm", "sbatch_command": ["sbatch", "--parsable"],
                                "cold_start": {"template": str(template)}}},
        "models": {MODEL: {"targets": [{"backend": "reference", "cluster": "sophia"}]}}})
    clusters, problems = read_clusters(config)
    assert problems == []
    poller = StatusPoller(clusters)
    await poller.refresh("sophia")
    start = await ColdStarter(poller).start(MODEL, [target("sophia")], {})
    assert start is not None and (start.state, start.job_id) == ("submitted", "7001")
    call, = scheduler.calls("sbatch")
    assert call.argv == ["--parsable"]
    assert call.stdin == ("#!/bin/bash\n#SBATCH --job-name=first-Meta-Llama-3.1-70B-Instruct\n"
                          f"vllm serve {MODEL}\n")


async def test_the_cluster_with_the_most_free_nodes_starts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeScheduler(tmp_path / "scheduler", commands=(
        "qstat", "pbsnodes", "qsub", "qstat-aurora", "pbsnodes-aurora", "qsub-aurora"))
    monkeypatch.setenv("PATH", fake.path)
    for suffix in ("", "-aurora"):
        fake.answer(f"qstat{suffix}", NO_JOBS)
        fake.answer(f"qsub{suffix}", "8400.pbs\n")
    fake.answer("pbsnodes", (DATA / "pbsnodes-2022.1.json").read_text())  # 3 free
    fake.answer("pbsnodes-aurora", (DATA / "pbsnodes-2022.1.json").read_text().replace(
        '"state":"job-busy"', '"state":"free"'))  # 5 free
    template = tmp_path / "start.pbs"
    template.write_text(TEMPLATE)
    cold = {"template": str(template)}
    config = parse_config({
        "clusters": {"polaris": {"status": "pbs", "cold_start": cold},
                     "aurora": {"status": "pbs", "cold_start": cold,
                                "qstat_command": ["qstat-aurora", "-f", "-F", "json"],
                                "pbsnodes_command": ["pbsnodes-aurora", "-a", "-F", "json"],
                                "qsub_command": ["qsub-aurora"]}},
        "models": {MODEL: {"targets": [{"name": "polaris", "backend": "reference",
                                        "cluster": "polaris"},
                                       {"name": "aurora", "backend": "reference",
                                        "cluster": "aurora"}]}}})
    clusters, problems = read_clusters(config)
    assert problems == []
    poller = StatusPoller(clusters)
    await asyncio.gather(poller.refresh("polaris"), poller.refresh("aurora"))
    start = await ColdStarter(poller).start(MODEL, [target("polaris"), target("aurora")], {})
    assert start is not None and start.cluster == "aurora"
    assert fake.calls("qsub") == [] and len(fake.calls("qsub-aurora")) == 1


@pytest.mark.parametrize(("scheduler_name", "output", "job_id"), [
    ("pbs", "8400.polaris-pbs-01.example.org\n",
     "8400.polaris-pbs-01.example.org"),
    ("pbs", "8401[].polaris-pbs-01\n", "8401[].polaris-pbs-01"),
    ("pbs", "Job submitted with project FIRST\n8402.s1\n", "8402.s1"),
    ("slurm", "Submitted batch job 7001\n", "7001"),
    ("slurm", "Submitted batch job 7002 on cluster sophia\n", "7002"),
    ("slurm", "7003;sophia\n", "7003"),
])
def test_job_ids_in_what_qsub_and_sbatch_print(scheduler_name: str, output: str,
                                                job_id: str) -> None:
    assert parse_job_id(scheduler_name, output, "submit") == job_id


def test_no_job_id_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"`sbatch` printed no job id; it printed 'sbatch: "
                                         r"error: Batch job submission failed'"):
        parse_job_id("slurm", "sbatch: error: Batch job submission failed\n", "sbatch")


def test_messages_say_where_and_how_far() -> None:
    queued = ColdStart(model="m", cluster="polaris", state="queued", job_id="8202.s",
                       queue_position=2, since=1000.0, expected_start=9000.0, retry_after=90)
    assert queued.message(now=1300.0) == (
        "m is starting on polaris: job 8202.s is queued (position 2 in its queue, waiting 5 min, "
        "expected to start in 2 h 8 min). Retry in 90 s; GET /resource_server/polaris/jobs "
        "shows its progress.")
    starting = ColdStart(model="m", cluster="sophia", state="starting", job_id="5201",
                         since=1000.0)
    assert starting.message(now=1045.0) == (
        "m is starting on sophia: job 5201 has run for 45 s and the model is loading. Retry in "
        "60 s; GET /resource_server/sophia/jobs shows its progress.")


def test_a_cold_start_is_a_503_with_retry_after() -> None:
    start = ColdStart(model="m", cluster="polaris", state="submitted", job_id="8400.s",
                      retry_after=45.4)
    error = start.as_error()
    response = OPENAI.response(error, "req-1")
    assert (response.status, response.headers["Retry-After"]) == (503, "45")
    assert json.loads(error.body()) == {"error": {
        "message": "m is not running yet: job 8400.s was submitted on polaris to start it. "
                   "Retry in 45 s; GET /resource_server/polaris/jobs shows its progress.",
        "type": "service_unavailable", "param": None, "code": "model_starting"}}
    failed = ColdStart(model="m", cluster="polaris", state="failed", reason="qsub: no")
    assert failed.as_error().code == "model_start_failed"
