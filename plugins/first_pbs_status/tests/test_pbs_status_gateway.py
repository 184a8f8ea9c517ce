"""The plugin in a gateway on loopback: a cluster's scheduler state in ``GET /status``, its
settings checked at start-up, and ``first-proxy status`` reading a running gateway."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import first_pbs_status
import openai
import pytest
from click.testing import CliRunner
from first_pbs_status.cli import status_command

from first_proxy import Status
from first_proxy.errors import ConfigError
from first_proxy.plugins import get_plugin_manager, list_plugins
from first_proxy.testing import (
    TEST_KEY,
    FakeScheduler,
    GatewayServer,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    eventually,
)

DATA = Path(__file__).parent / "data"
MODEL = "reference-model"  # what ReferenceUpstream serves


def qstat(recording: str, job_name: str) -> str:
    """A recorded qstat output whose job ``job_name`` serves the reference model instead."""
    return (DATA / recording).read_text().replace(job_name, f"first-{MODEL}")


RUNNING = qstat("qstat-2022.1-running.json", "first-Meta-Llama-3.1-8B-Instruct")
QUEUED = qstat("qstat-2022.1-queued-held.json", "first-Meta-Llama-3.1-70B-Instruct")


def config(upstream: ReferenceUpstream, **cluster: Any) -> dict[str, Any]:
    return {
        "clusters": {"polaris": {"status": "pbs", "poll_interval": 0.1,
                                 "timezone": "America/Chicago", **cluster}},
        "models": {MODEL: {"targets": [{"name": "polaris-vllm", "backend": "reference",
                                        "url": upstream.url, "cluster": "polaris",
                                        "framework": "vllm"}]}},
    }


@pytest.fixture
def scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    fake = FakeScheduler(tmp_path / "scheduler")
    monkeypatch.setenv("PATH", fake.path)
    fake.answer("qstat", RUNNING)
    fake.answer("pbsnodes", (DATA / "pbsnodes-2022.1.json").read_text())
    return fake


async def target_status(server: GatewayServer) -> dict[str, Any] | None:
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.url}/status", headers={"Authorization": f"Bearer {TEST_KEY}"}) as answer:
        assert answer.status == 200
        body = await answer.json()
    return body["models"][0]["targets"][0]["status"]


async def test_status_shows_the_clusters_state_as_the_scheduler_changes(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        scheduler: FakeScheduler) -> None:
    server = await make_gateway(config(reference_upstream),
                                plugins=[ReferenceBackend(), first_pbs_status])

    async def model_state() -> str | None:
        status = await target_status(server)
        return (status or {}).get("models", {}).get(MODEL)

    assert await eventually(model_state) == "running"
    status = await target_status(server)
    assert status is not None and status["reachable"] is True
    detail = status["detail"]
    assert (detail["cluster"], detail["scheduler"], detail["state"], detail["free_nodes"]) == (
        "polaris", "pbs", "up", 3)
    assert detail["models"][MODEL]["jobs"] == ["8101.polaris-pbs-01.example.org"]
    assert detail["models"][MODEL]["nodes"] == 2
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY,
                                  max_retries=0) as client:
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "served on polaris"}])
    assert answer.choices[0].message.content == "served on polaris"

    scheduler.answer("qstat", QUEUED)  # the job is gone; another one waits for it
    assert await eventually(lambda: _is(model_state, "queued")) == "queued"
    status = await target_status(server)
    assert status is not None and status["detail"]["models"][MODEL]["queue_position"] == 2

    scheduler.answer("qstat", exit_status=255, stderr="ssh: connect to host polaris-login "
                                                      "port 22: Connection refused\n")

    async def reason() -> str | None:
        status = await target_status(server)
        return None if status is None or status["reachable"] else status["last_error"]

    assert await eventually(reason) == ("`qstat -f -F json` exited with status 255: ssh: "
                                        "connect to host polaris-login port 22: Connection "
                                        "refused")
    status = await target_status(server)
    assert status is not None and status["detail"]["state"] == "unknown"

    scheduler.answer("qstat", RUNNING)
    assert await eventually(lambda: _is(model_state, "running")) == "running"


async def _is(state: Any, wanted: str) -> str | None:
    found = await state()
    return found if found == wanted else None


async def test_the_plugin_loads_through_its_entry_point(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        scheduler: FakeScheduler) -> None:
    rows = {row["name"]: row for row in list_plugins(get_plugin_manager())}
    assert rows["first_pbs_status"]["version"] == "0.1.0"
    assert rows["first_pbs_status"]["hooks"] == [
        "check_config", "lifespan", "register_commands", "register_migrations", "report_status",
        "select_target"]
    server = await make_gateway(config(reference_upstream), plugins=[ReferenceBackend()],
                                load_entrypoints=True)
    status = await eventually(lambda: _up(server.gateway.statuses.get(f"{MODEL}/polaris-vllm")))
    assert status.models == {MODEL: "running", "Mistral-7B-Instruct-v0.3": "running"}
    running = server.gateway.state[first_pbs_status.NAME]
    assert set(running.poller.pollers) == {"polaris"}


def _up(status: Status | None) -> Status | None:
    return status if status is not None and status.detail.get("state") == "up" else None


async def test_settings_are_checked_before_the_gateway_starts(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        tmp_path: Path) -> None:
    bad = config(reference_upstream, poll_interval=0, job_name_pattern="first-(.+)",
                 squeue_command=["squeue", "--json"], qsub_command="qsub",
                 cold_start={"template": "start.pbs", "models": ["nope"], "retry": 5})
    with pytest.raises(ConfigError) as caught:
        await make_gateway(bad, plugins=[ReferenceBackend(), first_pbs_status])
    assert sorted(caught.value.problems) == sorted([
        ("clusters.polaris.squeue_command", "is for status: slurm; this cluster has status: pbs "
                                            "(use qstat_command, pbsnodes_command, qsub_command)"),
        ("clusters.polaris.job_name_pattern", "needs a named group (?P<model>...) that matches "
                                              "the model's name, e.g. ^first-(?P<model>.+)$"),
        ("clusters.polaris.poll_interval", "expected a number of seconds > 0, got 0"),
        ("clusters.polaris.qsub_command", "expected the command as a list of words, e.g. "
                                          "[ssh, login1, qsub]; got 'qsub'"),
        ("clusters.polaris.cold_start.retry", "unknown key; expected one of: claim_ttl, models, "
                                              "retry_after, template"),
        ("clusters.polaris.cold_start.models", "'nope' has no target on this cluster (served "
                                               "here: reference-model)"),
    ])


async def test_files_are_checked_when_the_gateway_starts(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        tmp_path: Path) -> None:
    bad = config(reference_upstream, timezone="Mars/Olympus_Mons",
                 cold_start={"template": str(tmp_path / "missing.pbs")})
    with pytest.raises(ConfigError) as caught:
        await make_gateway(bad, plugins=[ReferenceBackend(), first_pbs_status])
    assert sorted(caught.value.problems) == sorted([
        ("clusters.polaris.timezone", "unknown time zone 'Mars/Olympus_Mons'; give an IANA "
                                      "name such as America/Chicago"),
        ("clusters.polaris.cold_start.template", f"{tmp_path / 'missing.pbs'} is not a "
                                                 "readable file"),
    ])


async def first_proxy_status(*args: str) -> tuple[int, str]:
    """Run the installed ``first-proxy status`` command; its exit status and output."""
    command = Path(sys.executable).parent / "first-proxy"
    process = await asyncio.create_subprocess_exec(
        str(command), "status", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_the_status_command_prints_clusters_jobs_and_targets(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        scheduler: FakeScheduler) -> None:
    server = await make_gateway(config(reference_upstream),
                                plugins=[ReferenceBackend(), first_pbs_status])
    await eventually(lambda: _is(lambda: _state_of(server), "running"))
    code, output = await first_proxy_status("--url", server.url, "--api-key", TEST_KEY)
    assert code == 0, output
    clusters, jobs, targets = (
        [" ".join(line.split()) for line in table.splitlines()]
        for table in output.strip().split("\n\n"))
    assert clusters[0] == ("cluster state scheduler free nodes checked maintenance, version or "
                           "error")
    assert clusters[2].startswith("polaris up pbs 3 ")
    assert clusters[2].endswith(" ago PBS 2022.1.1.20220926110806")
    assert jobs[0] == "cluster model state jobs facts"
    # Only the models the gateway serves: the others running there are not the caller's.
    assert len(jobs) == 3
    assert jobs[2].startswith(f"polaris {MODEL} running 8101.polaris-pbs-01.example.org for ")
    assert jobs[2].endswith(" on 2 node(s)")
    assert targets == ["model target backend cluster state cool-down", targets[1],
                       f"{MODEL} polaris-vllm reference polaris running"]


async def _state_of(server: GatewayServer) -> str | None:
    status = await target_status(server)
    return (status or {}).get("models", {}).get(MODEL)


async def status_in_process(*args: str) -> tuple[int, str]:
    """``first-proxy status`` called here, in a thread: the gateway serves on this loop."""
    result = await asyncio.to_thread(CliRunner().invoke, status_command, list(args))
    return result.exit_code, result.output


async def test_the_status_command_without_a_gateway() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, output = await status_in_process("--url", f"http://127.0.0.1:{port}",
                                           "--api-key", TEST_KEY)
    assert code == 1
    assert f"Error: cannot reach http://127.0.0.1:{port}/resource_server/status" in output
    assert "Is the gateway running there? (--url or FIRST_PROXY_URL)" in output


async def test_the_status_command_with_a_wrong_key(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        scheduler: FakeScheduler) -> None:
    server = await make_gateway(config(reference_upstream),
                                plugins=[ReferenceBackend(), first_pbs_status])
    code, output = await status_in_process("--url", server.url, "--api-key", "sk-wrong-key")
    assert code == 1
    assert output.startswith(f"Error: {server.url}/resource_server/status answered 401: ")
