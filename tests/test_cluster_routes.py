"""FIRST's cluster routes (list-endpoints, whoami, {cluster}/jobs, {cluster}/models, status)
and where /v1/models says each model runs: from cached statuses only, filtered per caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import openai
import pytest

from first_proxy import Status, Target, hookimpl
from first_proxy.testing import (
    TEST_KEY,
    GatewayServer,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    api_keys,
)

GUEST_KEY = "sk-guest-0123456789"
MODEL, STAFF_MODEL = "reference-model", "staff-model"
MAINTENANCE = "Down for its upgrade until 18:00 UTC"


class Scheduler:
    """A cluster status plugin answering from a table the test sets; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.answers: dict[str, Status] = {}

    @hookimpl
    def report_status(self, cluster: str) -> Status | None:
        self.calls += 1
        return self.answers.get(cluster)


def queued_on_sophia() -> Status:
    return Status(reachable=True, models={MODEL: "queued"}, checked_at=1000.0, detail={
        "scheduler": "slurm", "version": "Slurm 24.05", "free_nodes": 0,
        "models": {MODEL: {"state": "queued", "jobs": ["5201"], "since": 900.0, "nodes": 2,
                           "queue_position": 3, "reason": "Priority"}}})


def running_on_polaris() -> Status:
    return Status(reachable=True, models={MODEL: "running", STAFF_MODEL: "held"},
                  checked_at=1000.0, detail={
                      "scheduler": "pbs", "version": "PBS 2022.1", "free_nodes": 3,
                      "models": {
                          MODEL: {"state": "running", "jobs": ["8101.pbs"], "since": 500.0,
                                  "nodes": 2},
                          STAFF_MODEL: {"state": "held", "jobs": ["8203.pbs"], "since": 600.0,
                                        "reason": "Job held by svcfirst"}}})


@pytest.fixture
async def scheduler() -> Scheduler:
    return Scheduler()


@pytest.fixture
async def gateway(make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
                  scheduler: Scheduler) -> AsyncIterator[GatewayServer]:
    url = reference_upstream.url

    def target(name: str, cluster: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "backend": "reference", "url": url, "cluster": cluster,
                "framework": "vllm", **extra}

    server = await make_gateway({
        "auth": api_keys({"name": "guest", "key": GUEST_KEY, "groups": ["students"]}),
        "clusters": {"polaris": {}, "sophia": {}, "aurora": {"maintenance": MAINTENANCE}},
        "models": {
            MODEL: {"targets": [target("polaris-vllm", "polaris"), target("sophia-vllm", "sophia"),
                                target("aurora-vllm", "aurora"),
                                target("local-vllm", "local", allowed_groups=["staff"])]},
            STAFF_MODEL: {"allowed_groups": ["staff"], "description": "for staff",
                          "targets": [target("polaris-staff", "polaris")]},
        },
    }, plugins=[ReferenceBackend(), scheduler])
    scheduler.answers = {"polaris": running_on_polaris(), "sophia": queued_on_sophia()}
    await server.gateway.refresh_statuses()
    yield server


async def get(server: GatewayServer, path: str, key: str | None = TEST_KEY
              ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as http, http.get(server.url + path,
                                                        headers=headers) as answer:
        return answer.status, await answer.json()


ROUTES = ["/resource_server/list-endpoints", "/resource_server/whoami",
          "/resource_server/polaris/jobs", "/resource_server/polaris/models",
          "/resource_server/status"]


@pytest.mark.parametrize("path", ROUTES)
async def test_each_route_needs_a_credential(gateway: GatewayServer, path: str) -> None:
    for key in (None, "sk-nobody-0000"):
        status, body = await get(gateway, path, key)
        assert status == 401
        assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_the_routes_never_ask_the_scheduler(gateway: GatewayServer,
                                                  scheduler: Scheduler) -> None:
    calls = scheduler.calls
    for path in ROUTES:
        assert (await get(gateway, path))[0] == 200
    assert (await get(gateway, "/v1/models"))[0] == 200
    assert scheduler.calls == calls


async def test_list_endpoints_gives_clusters_frameworks_models_and_paths(
        gateway: GatewayServer) -> None:
    status, body = await get(gateway, "/resource_server/list-endpoints")
    assert status == 200
    assert list(body["clusters"]) == ["polaris", "sophia", "aurora", "local"]
    polaris = body["clusters"]["polaris"]
    assert polaris["frameworks"] == {"vllm": {
        "models": [MODEL, STAFF_MODEL],
        "endpoints": {"chat/completions": "/resource_server/polaris/vllm/v1/chat/completions",
                      "completions": "/resource_server/polaris/vllm/v1/completions",
                      "embeddings": "/resource_server/polaris/vllm/v1/embeddings"}}}
    assert (polaris["jobs_url"], polaris["models_url"]) == (
        "/resource_server/polaris/jobs", "/resource_server/polaris/models")
    assert (polaris["state"], polaris["available"], polaris["scheduler"]) == ("up", True, "pbs")
    aurora = body["clusters"]["aurora"]
    assert (aurora["state"], aurora["available"], aurora["maintenance"]) == (
        "maintenance", False, MAINTENANCE)
    assert body["federated"] == {"models": [MODEL, STAFF_MODEL], "endpoints": {
        "chat/completions": "/resource_server/v1/chat/completions",
        "completions": "/resource_server/v1/completions",
        "embeddings": "/resource_server/v1/embeddings"}}

    # A guest sees neither the staff model nor the cluster only staff may use.
    status, body = await get(gateway, "/resource_server/list-endpoints", GUEST_KEY)
    assert list(body["clusters"]) == ["polaris", "sophia", "aurora"]
    assert body["clusters"]["polaris"]["frameworks"]["vllm"]["models"] == [MODEL]
    assert body["federated"]["models"] == [MODEL]


async def test_whoami_says_who_and_how_never_the_token(gateway: GatewayServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"{gateway.url}/resource_server/whoami",
            headers={"Authorization": f"Bearer {TEST_KEY}"}) as answer:
        text = await answer.text()
        assert answer.status == 200
    assert TEST_KEY not in text
    assert await get(gateway, "/resource_server/whoami", GUEST_KEY) == (200, {
        "id": "key:guest", "name": "guest", "username": "guest", "email": None,
        "groups": ["students"], "identity_provider": "api_key", "authenticated_with": "api_key"})


async def test_jobs_list_the_callers_models_by_state(gateway: GatewayServer) -> None:
    status, polaris = await get(gateway, "/resource_server/polaris/jobs")
    assert status == 200
    assert {key: polaris[key] for key in ("cluster", "state", "available", "scheduler",
                                          "version", "free_nodes", "checked_at")} == {
        "cluster": "polaris", "state": "up", "available": True, "scheduler": "pbs",
        "version": "PBS 2022.1", "free_nodes": 3, "checked_at": 1000.0}
    assert polaris["running"] == [{"model": MODEL, "state": "running", "frameworks": ["vllm"],
                                   "jobs": ["8101.pbs"], "since": 500.0, "nodes": 2}]
    assert polaris["stopped"] == [{"model": STAFF_MODEL, "state": "held",
                                   "frameworks": ["vllm"], "jobs": ["8203.pbs"], "since": 600.0,
                                   "reason": "Job held by svcfirst"}]
    assert polaris["starting"] == polaris["queued"] == polaris["unknown"] == []

    status, sophia = await get(gateway, "/resource_server/sophia/jobs", GUEST_KEY)
    assert sophia["queued"] == [{"model": MODEL, "state": "queued", "frameworks": ["vllm"],
                                 "jobs": ["5201"], "since": 900.0, "nodes": 2,
                                 "queue_position": 3, "reason": "Priority"}]
    # Only what the guest may use: the held staff model is not theirs to see.
    status, polaris = await get(gateway, "/resource_server/polaris/jobs", GUEST_KEY)
    assert polaris["stopped"] == []

    # A cluster with no scheduler plugin and no checks yet: nothing known.
    status, local = await get(gateway, "/resource_server/local/jobs")
    assert (local["state"], local["scheduler"], local["unknown"][0]["model"]) == (
        "unknown", None, MODEL)


@pytest.mark.parametrize(("path", "key", "theirs"), [
    ("/resource_server/nowhere/jobs", TEST_KEY, "polaris, sophia, aurora, local"),
    ("/resource_server/nowhere/models", TEST_KEY, "polaris, sophia, aurora, local"),
    ("/resource_server/local/jobs", GUEST_KEY, "polaris, sophia, aurora"),
    ("/resource_server/local/models", GUEST_KEY, "polaris, sophia, aurora")])
async def test_an_unknown_cluster_is_a_404(gateway: GatewayServer, path: str, key: str,
                                           theirs: str) -> None:
    status, body = await get(gateway, path, key)
    assert status == 404
    assert (body["error"]["code"], body["error"]["type"]) == (
        "cluster_not_found", "invalid_request_error")
    cluster = path.split("/")[2]
    assert body["error"]["message"] == (
        f"There is no cluster '{cluster}' among those you may use ({theirs}). "
        "GET /resource_server/list-endpoints lists them.")


async def test_models_of_a_cluster(gateway: GatewayServer) -> None:
    status, body = await get(gateway, "/resource_server/polaris/models")
    assert status == 200 and body["object"] == "list" and body["cluster"] == "polaris"
    assert [m["id"] for m in body["data"]] == [MODEL, STAFF_MODEL]
    staff = body["data"][1]
    assert (staff["state"], staff["description"], staff["reason"]) == (
        "held", "for staff", "Job held by svcfirst")
    assert staff["endpoints"]["vllm"]["chat/completions"] == (
        "/resource_server/polaris/vllm/v1/chat/completions")
    status, body = await get(gateway, f"/resource_server/polaris/models?model_id={MODEL}")
    assert [m["id"] for m in body["data"]] == [MODEL]
    status, body = await get(gateway, f"/resource_server/polaris/models?model_id={STAFF_MODEL}",
                             GUEST_KEY)
    assert (status, body["error"]["code"], body["error"]["param"]) == (
        404, "model_not_found", "model_id")


async def test_status_per_cluster_and_the_targets_status_beside_it(
        gateway: GatewayServer) -> None:
    status, body = await get(gateway, "/resource_server/status")
    assert status == 200
    assert {name: (c["state"], c["available"], c["maintenance"])
            for name, c in body["clusters"].items()} == {
        "polaris": ("up", True, None), "sophia": ("up", True, None),
        "aurora": ("maintenance", False, MAINTENANCE), "local": ("unknown", False, None)}
    # GET /status stays the per-target view.
    status, body = await get(gateway, "/status")
    targets = {t["name"]: t for m in body["models"] for t in m["targets"]}
    assert targets["sophia-vllm"]["state"] == "queued"
    assert targets["polaris-vllm"]["status"]["detail"]["scheduler"] == "pbs"


async def test_v1_models_says_where_each_model_runs(gateway: GatewayServer) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=TEST_KEY,
                                  max_retries=0) as client:
        models = {m.id: m for m in (await client.models.list()).data}
        one = await client.models.retrieve(MODEL)
    # aurora runs nothing the gateway may send work to while under maintenance.
    assert models[MODEL].model_extra == {"first_proxy": {
        "running": ["polaris"], "starting": [], "queued": ["sophia"]}}
    assert models[STAFF_MODEL].model_extra == {"first_proxy": {
        "running": [], "starting": [], "queued": []}}
    assert one.model_extra == models[MODEL].model_extra


class Unreadable:
    @hookimpl
    def report_status(self, cluster: str, targets: Sequence[Target],
                      settings: Mapping[str, Any]) -> Status:
        raise TimeoutError("qstat did not answer within 10 s")


async def test_a_cluster_whose_scheduler_cannot_be_read_is_unknown(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({
        "clusters": {"polaris": {}},
        "models": {MODEL: {"targets": [{"name": "polaris-vllm", "backend": "reference",
                                        "url": reference_upstream.url, "cluster": "polaris"}]}},
    }, plugins=[ReferenceBackend(), Unreadable()])
    await server.gateway.refresh_statuses()
    status, body = await get(server, "/resource_server/polaris/jobs")
    assert status == 200
    assert (body["state"], body["available"], body["last_error"]) == (
        "unknown", False, "TimeoutError: qstat did not answer within 10 s")
    assert [m["model"] for m in body["unknown"]] == [MODEL]
