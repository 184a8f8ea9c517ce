"""The fake Globus Compute of the testing kit, as other plugins would use it: the SDK's
``Client`` polling for results (no Executor, no AMQP), and its refusals."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import globus_sdk
import pytest
from first_globus_compute import remote
from first_globus_compute.executors import serializer
from globus_compute_sdk.errors import TaskExecutionFailed, TaskPending

from first_proxy.testing import eventually
from first_proxy.testing.globus_compute import FakeComputeService


async def result_of(client: Any, task_id: str) -> Any:
    """The task's result once the service has it, asked the way the SDK polls."""

    async def done() -> tuple[Any] | None:
        try:
            return (await asyncio.to_thread(client.get_result, task_id),)
        except TaskPending:
            return None

    return (await eventually(done))[0]


async def test_a_client_submits_and_polls_for_results(compute_service: FakeComputeService) -> None:
    client = await asyncio.to_thread(compute_service.client)
    client.fx_serializer = serializer()
    function = await asyncio.to_thread(client.register_function, remote.scheduler_status)
    endpoint = compute_service.add_endpoint()
    batch = client.create_batch(result_serializers=["globus_compute_sdk.serialize.JSONData"])
    batch.add(function, args=([sys.executable, "-c", "print('R')"],))
    batch.add(function, args=([sys.executable, "-c", "import sys; sys.exit(3)"],))
    batch.add(function, args=(7,))  # not a command: the function fails on the endpoint
    submitted = await asyncio.to_thread(client.batch_run, endpoint, batch)
    ok, exits, fails = submitted["tasks"][function]
    assert (await result_of(client, ok))["stdout"] == "R\n"
    assert (await result_of(client, exits))["returncode"] == 3
    with pytest.raises(TaskExecutionFailed) as caught:
        await result_of(client, fails)
    assert "TypeError" in caught.value.remote_data
    assert compute_service.submissions == [3]
    statuses = await asyncio.to_thread(client.get_batch_result, [ok, exits])
    assert {tid: s["status"] for tid, s in statuses.items()} == {ok: "success", exits: "success"}


async def test_the_service_refuses_what_the_hosted_one_would(
        compute_service: FakeComputeService) -> None:
    wrong = await asyncio.to_thread(compute_service.client,
                                    globus_sdk.AccessTokenAuthorizer("not-a-token"))
    with pytest.raises(globus_sdk.GlobusAPIError) as caught:
        await asyncio.to_thread(wrong.get_endpoint_status, compute_service.add_endpoint())
    assert caught.value.http_status == 401
    client = await asyncio.to_thread(compute_service.client)
    with pytest.raises(globus_sdk.GlobusAPIError) as caught:
        await asyncio.to_thread(client.get_endpoint_status, "6a1b0c5e-5c22-4d43-9e2b-1f0a7e0d3c11")
    assert (caught.value.http_status, caught.value.code) == (404, "ENDPOINT_NOT_FOUND")
