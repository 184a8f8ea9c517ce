"""Federated routing end to end: one model on two clusters, ``polaris`` (PBS) and ``sophia``
(Slurm), each a reference upstream, their schedulers fake ``qstat`` and ``squeue`` executables;
callers use the openai SDK against gateways on loopback.

Traffic follows the schedulers' state, fails over when an upstream dies, cools a failing
target down and takes it back once it answers; maintenance, allowed groups and pinned paths
are respected; a model that runs nowhere is started once, however many requests and gateway
instances ask for it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import first_pbs_status
import openai
import pytest

from first_proxy.status import state_of
from first_proxy.testing import (
    TEST_KEY,
    FakeScheduler,
    GatewayServer,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    api_keys,
    eventually,
)

DATA = Path(__file__).parent / "data"
MODEL = "reference-model"  # what ReferenceUpstream serves
GUEST_KEY = "sk-guest-0123456789"
POSTGRES_VARIABLE = "FIRST_PROXY_TEST_POSTGRES"


def recorded(name: str, job_name: str | None = None) -> str:
    """A recorded output; with ``job_name``, that job serves the reference model instead."""
    text = (DATA / name).read_text()
    return text if job_name is None else text.replace(job_name, f"first-{MODEL}")


QSTAT = {"running": recorded("qstat-2022.1-running.json", "first-Meta-Llama-3.1-8B-Instruct"),
         "queued": recorded("qstat-2022.1-queued-held.json", "first-Meta-Llama-3.1-70B-Instruct"),
         "none": recorded("qstat-2022.1-empty.json")}
SQUEUE = {"running": recorded("squeue-24.05-v0.0.41.json", "first-Meta-Llama-3.1-8B-Instruct"),
          "queued": recorded("squeue-24.05-v0.0.41.json", "first-Meta-Llama-3.1-70B-Instruct"),
          "none": recorded("squeue-23.11-v0.0.40-empty.json")}
TEMPLATE = "#!/bin/bash\n#PBS -N first-{model_basename}\nvllm serve {model}\n"


class Site:
    """The two clusters: their upstreams and their schedulers, switched by the tests."""

    def __init__(self, scheduler: FakeScheduler, polaris: ReferenceUpstream,
                 sophia: ReferenceUpstream, template: Path) -> None:
        self.scheduler = scheduler
        self.polaris = polaris
        self.sophia = sophia
        self.template = template

    def set(self, *, polaris: str, sophia: str) -> None:
        """The model's state on each cluster from now on: running, queued or none."""
        self.scheduler.answer("qstat", QSTAT[polaris])
        self.scheduler.answer("squeue", SQUEUE[sophia])

    def config(self, *, polaris: dict[str, Any] | None = None,
               sophia: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
        """A gateway.yaml: the model on both clusters; ``polaris`` and ``sophia`` add to
        each target, ``sections`` to the file."""
        return {
            "clusters": {
                "polaris": {"status": "pbs", "poll_interval": 0.2, "pbsnodes_command": [],
                            "timezone": "America/Chicago",
                            "cold_start": {"template": str(self.template), "retry_after": 30}},
                "sophia": {"status": "slurm", "poll_interval": 0.2, "sinfo_command": []},
            },
            "models": {MODEL: {"targets": [
                {"name": "polaris-vllm", "backend": "reference", "url": self.polaris.url,
                 "cluster": "polaris", "framework": "vllm", **(polaris or {})},
                {"name": "sophia-vllm", "backend": "reference", "url": self.sophia.url,
                 "cluster": "sophia", "framework": "vllm", **(sophia or {})},
            ]}},
            **sections,
        }


@pytest.fixture
async def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:
    scheduler = FakeScheduler(tmp_path / "scheduler")
    monkeypatch.setenv("PATH", scheduler.path)
    # Slow enough that every concurrent caller arrives while the first submission runs.
    scheduler.answer("qsub", "8400.polaris-pbs-01\n", delay=0.3)
    template = tmp_path / "start-model.pbs"
    template.write_text(TEMPLATE)
    async with ReferenceUpstream() as polaris, ReferenceUpstream() as sophia:
        found = Site(scheduler, polaris, sophia, template)
        found.set(polaris="running", sophia="running")
        yield found


async def start(make_gateway: MakeGateway, config: dict[str, Any]) -> GatewayServer:
    return await make_gateway(config, plugins=[ReferenceBackend(), first_pbs_status])


async def states(server: GatewayServer, **wanted: str) -> bool:
    """Whether the gateway sees the model in ``wanted`` states (by cluster) now."""
    gateway = server.gateway
    seen = {t.cluster: state_of(t, gateway.statuses.get(t.key))
            for t in gateway.config.models[MODEL].targets}
    return all(seen[cluster] == state for cluster, state in wanted.items())


def client(server: GatewayServer, key: str = TEST_KEY, base_url: str | None = None,
           ) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url or server.base_url, api_key=key, max_retries=0)


async def ask(sdk: openai.AsyncOpenAI, text: str = "where am I served") -> str:
    """Ask once; the target that answered (``X-First-Target``)."""
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}])
    assert raw.parse().choices[0].message.content == text
    return raw.headers["X-First-Target"]


async def served_by(sdk: openai.AsyncOpenAI, times: int) -> list[str]:
    return [await ask(sdk) for _ in range(times)]


async def test_traffic_follows_the_schedulers_state(make_gateway: MakeGateway,
                                                    site: Site) -> None:
    site.set(polaris="running", sophia="queued")
    server = await start(make_gateway, site.config())
    await eventually(lambda: states(server, polaris="running", sophia="queued"))
    async with client(server) as sdk:
        assert set(await served_by(sdk, 6)) == {"polaris-vllm"}

        # The job on polaris ends; the one on sophia starts. The next poll tells the gateway,
        # and from the first request after it the traffic goes to sophia.
        site.set(polaris="queued", sophia="running")
        await eventually(lambda: states(server, polaris="queued", sophia="running"))
        assert set(await served_by(sdk, 6)) == {"sophia-vllm"}

        # Running on both, equally loaded: they take turns.
        site.set(polaris="running", sophia="running")
        await eventually(lambda: states(server, polaris="running", sophia="running"))
        assert sorted(await served_by(sdk, 6)) == ["polaris-vllm"] * 3 + ["sophia-vllm"] * 3
    assert len(site.polaris.received) == 9 and len(site.sophia.received) == 9


async def test_every_request_succeeds_when_an_upstream_dies(make_gateway: MakeGateway,
                                                            site: Site) -> None:
    server = await start(make_gateway, site.config(status={"cooldown_seconds": 3600}))
    await eventually(lambda: states(server, polaris="running", sophia="running"))
    succeeded = 0
    async with client(server) as sdk:
        for _ in range(10):
            await ask(sdk)
            succeeded += 1
        # Its job still runs as the scheduler sees it; its server is gone.
        await site.polaris.close()
        answered = [await ask(sdk) for _ in range(30)]
        succeeded += len(answered)
    assert succeeded == 40
    assert set(answered) == {"sophia-vllm"}
    rows = [row for row in await server.logged() if row["status"] == 200]
    assert len(rows) == 40
    # Polaris was tried until it had failed three times in a row, then cooled down.
    retried = [row for row in rows if row["attempts"] == 2]
    assert len(retried) == 3 and {row["target"] for row in retried} == {"sophia-vllm"}
    polaris = server.gateway.config.models[MODEL].targets[0]
    assert polaris.key in server.gateway.health.cooled()


async def test_a_failing_target_is_cooled_down_and_taken_back(make_gateway: MakeGateway,
                                                              site: Site) -> None:
    server = await start(make_gateway, site.config(
        polaris={"weight": 2}, status={"cooldown_failures": 3, "cooldown_seconds": 0.5}))
    await eventually(lambda: states(server, polaris="running", sophia="running"))
    gateway = server.gateway
    polaris = gateway.config.models[MODEL].targets[0]
    site.polaris.fail_status = 500
    async with client(server) as sdk:
        # Polaris weighs more, so it is tried first, fails, and the call goes on to sophia.
        assert await served_by(sdk, 3) == ["sophia-vllm"] * 3
        assert len(site.polaris.received) == 3
        assert polaris.key in gateway.health.cooled()
        # Cooled down: it is tried last, so not at all while sophia answers.
        assert await served_by(sdk, 5) == ["sophia-vllm"] * 5
        assert len(site.polaris.received) == 3

        # Back on its feet: once the cool-down is over it is tried first again, and answers.
        site.polaris.fail_status = None
        await eventually(lambda: polaris.key not in gateway.health.cooled())
        assert await served_by(sdk, 3) == ["polaris-vllm"] * 3
        assert gateway.health.state(polaris) is None
    body = await get_json(server, "/status")
    shown = {t["name"]: t for t in body["models"][0]["targets"]}
    assert shown["polaris-vllm"]["cooldown"] is None


async def get_json(server: GatewayServer, path: str) -> Any:
    """GET ``path`` on the gateway with the test key; the JSON body of its 200."""
    async with aiohttp.ClientSession() as http, http.get(
            server.url + path, headers={"Authorization": f"Bearer {TEST_KEY}"}) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def test_maintenance_is_skipped_and_a_pinned_request_gets_503(
        make_gateway: MakeGateway, site: Site) -> None:
    config = site.config()
    config["clusters"]["polaris"]["maintenance"] = "Polaris is down for an upgrade until Monday."
    server = await start(make_gateway, config)
    await eventually(lambda: states(server, polaris="running", sophia="running"))
    async with client(server) as sdk:
        assert set(await served_by(sdk, 6)) == {"sophia-vllm"}
    pinned = f"{server.url}/resource_server/polaris/vllm/v1"
    async with client(server, base_url=pinned) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(sdk)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["Retry-After"] == "300"
    assert caught.value.body == {
        "message": "polaris is under maintenance: Polaris is down for an upgrade until Monday.",
        "type": "service_unavailable", "param": None, "code": "maintenance"}
    assert site.polaris.received == type(site.polaris.received)()
    polaris = (await get_json(server, "/resource_server/status"))["clusters"]["polaris"]
    assert polaris == {
        "state": "maintenance", "available": False,
        "maintenance": "Polaris is down for an upgrade until Monday.", "scheduler": "pbs",
        "version": "PBS 2022.1.1.20220926110806", "free_nodes": None,
        "checked_at": polaris["checked_at"], "last_error": None}


async def test_allowed_groups_are_respected(make_gateway: MakeGateway, site: Site) -> None:
    site.set(polaris="queued", sophia="running")
    server = await start(make_gateway, site.config(
        sophia={"allowed_groups": ["staff"]},
        auth=api_keys({"name": "guest", "key": GUEST_KEY, "groups": ["students"]})))
    await eventually(lambda: states(server, polaris="queued", sophia="running"))
    async with client(server) as staff, client(server, GUEST_KEY) as guest:
        assert set(await served_by(staff, 4)) == {"sophia-vllm"}
        # The guest may only use polaris, where the model waits in the queue: a 503 that
        # says so, and nothing is sent to sophia on the guest's behalf.
        received = len(site.sophia.received)
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(guest)
        assert len(site.sophia.received) == received
        models = await guest.models.list()
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "model_starting"
    assert caught.value.body["message"].startswith(
        f"{MODEL} is starting on polaris: job 8202.polaris-pbs-01.example.org is queued "
        "(position 2 in its queue, waiting ")
    assert site.scheduler.calls("qsub") == []
    assert models.data[0].model_extra == {"first_proxy": {
        "running": [], "starting": [], "queued": ["polaris"]}}


async def test_a_pinned_path_bypasses_selection(make_gateway: MakeGateway, site: Site) -> None:
    server = await start(make_gateway, site.config(sophia={"weight": 2}))
    await eventually(lambda: states(server, polaris="running", sophia="running"))
    pinned = f"{server.url}/resource_server/polaris/vllm/v1"
    async with client(server) as chosen, client(server, base_url=pinned) as on_polaris:
        assert set(await served_by(chosen, 4)) == {"sophia-vllm"}
        assert set(await served_by(on_polaris, 4)) == {"polaris-vllm"}
        # Queued on polaris: a pinned request is not moved to sophia, it hears why it waits.
        site.set(polaris="queued", sophia="running")
        await eventually(lambda: states(server, polaris="queued"))
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(on_polaris)
    assert caught.value.status_code == 503
    assert "is starting on polaris" in caught.value.body["message"]
    assert len(site.polaris.received) == 4


async def cold_requests(servers: list[GatewayServer], count: int = 20,
                        ) -> list[openai.APIStatusError]:
    """``count`` concurrent requests spread over ``servers``; each must be refused."""
    clients = [client(server) for server in servers]

    async def one(sdk: openai.AsyncOpenAI) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(sdk)
        return caught.value

    try:
        return await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(count)))
    finally:
        for sdk in clients:
            await sdk.close()


def check_cold_start(errors: list[openai.APIStatusError], site: Site) -> None:
    assert {(e.status_code, e.response.headers["Retry-After"], e.body["code"])
            for e in errors} == {(503, "30", "model_starting")}
    assert {e.body["message"] for e in errors} <= {
        f"{MODEL} is not running yet: job 8400.polaris-pbs-01 was submitted on polaris to "
        "start it. Retry in 30 s; GET /resource_server/polaris/jobs shows its progress.",
        f"{MODEL} is not running yet: a job was submitted on polaris to start it. Retry in "
        "30 s; GET /resource_server/polaris/jobs shows its progress."}
    submitted, = site.scheduler.calls("qsub")
    assert submitted.stdin == TEMPLATE.replace("{model_basename}", MODEL).replace(
        "{model}", MODEL)


async def test_twenty_concurrent_requests_for_a_cold_model_submit_one_job(
        make_gateway: MakeGateway, site: Site) -> None:
    site.set(polaris="none", sophia="none")
    server = await start(make_gateway, site.config())
    await eventually(lambda: states(server, polaris="stopped", sophia="stopped"))
    check_cold_start(await cold_requests([server]), site)

    # The scheduler lists the job: callers hear where it waits; still one job.
    site.set(polaris="queued", sophia="none")
    await eventually(lambda: states(server, polaris="queued"))
    errors = await cold_requests([server], 5)
    assert {e.body["message"].split(" (")[0] for e in errors} == {
        f"{MODEL} is starting on polaris: job 8202.polaris-pbs-01.example.org is queued"}
    assert len(site.scheduler.calls("qsub")) == 1

    # It runs: served.
    site.set(polaris="running", sophia="none")
    await eventually(lambda: states(server, polaris="running"))
    async with client(server) as sdk:
        assert await ask(sdk) == "polaris-vllm"
    assert len(site.scheduler.calls("qsub")) == 1


async def test_a_model_served_elsewhere_is_not_started(make_gateway: MakeGateway,
                                                       site: Site) -> None:
    site.set(polaris="none", sophia="none")
    async with ReferenceUpstream() as provider:
        config = site.config()
        config["models"][MODEL]["targets"].append(
            {"name": "provider", "backend": "reference", "url": provider.url})
        server = await start(make_gateway, config)
        await eventually(lambda: states(server, polaris="stopped", sophia="stopped"))
        async with client(server) as sdk:
            assert await served_by(sdk, 3) == ["provider"] * 3
    assert site.scheduler.calls("qsub") == []


async def two_gateways(make: Callable[[], Awaitable[GatewayServer]]) -> list[GatewayServer]:
    servers = [await make(), await make()]
    for server in servers:
        await eventually(lambda server=server: states(server, polaris="stopped"))
    return servers


async def test_two_gateways_sharing_a_sqlite_file_submit_one_job(
        make_gateway: MakeGateway, site: Site, tmp_path: Path) -> None:
    site.set(polaris="none", sophia="none")
    config = site.config(store=f"sqlite:///{tmp_path}/shared.db")
    servers = await two_gateways(lambda: start(make_gateway, config))
    check_cold_start(await cold_requests(servers), site)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a new schema of its own, dropped after."""
    base = os.environ.get(POSTGRES_VARIABLE)
    if not base:
        pytest.skip(f"set {POSTGRES_VARIABLE} to a PostgreSQL URL (e.g. "
                    "postgresql://postgres@127.0.0.1:5432/test) to run this test on PostgreSQL")
    asyncpg = pytest.importorskip("asyncpg")
    connection = await asyncpg.connect(base, timeout=5)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in base else "?"
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


async def test_two_gateways_sharing_postgresql_submit_one_job(
        make_gateway: MakeGateway, site: Site, postgres_url: str) -> None:
    site.set(polaris="none", sophia="none")
    servers = await two_gateways(lambda: start(make_gateway, site.config(store=postgres_url)))
    check_cold_start(await cold_requests(servers), site)
    for server in servers:  # while their schema is there: the request log is written out
        await server.close()
    assert len(site.scheduler.calls("qsub")) == 1
