"""The calls a gateway has running at each target (``gateway.health.busy``): counted from
dispatch to the answer's end on every path, and used to spread calls while the targets'
reported load is older than the calls just sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from first_proxy import Status
from first_proxy.testing import (
    TEST_KEY,
    GatewayServer,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    eventually,
)

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def chat(stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "stream": stream,
            "messages": [{"role": "user", "content": "one two three four five six"}]}


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[ReferenceUpstream, ReferenceUpstream]]:
    async with ReferenceUpstream() as a, ReferenceUpstream() as b:
        yield a, b


async def start(make_gateway: MakeGateway, a: ReferenceUpstream, b: ReferenceUpstream,
                **first: Any) -> GatewayServer:
    """Two targets; both report themselves up and serving, with no load figures."""
    up = ReferenceBackend(status=lambda target, gateway: Status(reachable=True))
    server = await make_gateway({"models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": a.url, **first},
        {"name": "b", "backend": "reference", "url": b.url}]}}}, plugins=[up])
    await server.gateway.refresh_statuses()
    return server


def busy(server: GatewayServer) -> dict[str, int]:
    return {key.split("/")[1]: count for key, count in server.gateway.health.busy.items()}


async def idle(server: GatewayServer) -> bool:
    return all(count == 0 for count in server.gateway.health.busy.values())


async def post(server: GatewayServer, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH, json=body) as answer:
        return answer.status, await answer.read()


async def test_a_call_counts_until_its_answer_ends_on_every_path(
        make_gateway: MakeGateway, upstreams: tuple[ReferenceUpstream, ReferenceUpstream]) -> None:
    a, b = upstreams
    server = await start(make_gateway, a, b, weight=2, timeouts={"first_byte": 0.3})
    assert (await post(server, chat()))[0] == 200
    assert (await post(server, chat(stream=True)))[0] == 200
    assert busy(server) == {"a": 0}

    a.fail_status = 503  # a fails, b answers
    assert (await post(server, chat()))[0] == 200
    assert busy(server) == {"a": 0, "b": 0}
    a.fail_status, a.break_after = None, 2  # a stream that breaks in the middle
    status, body = await post(server, chat(stream=True))
    assert status == 200 and b"error" in body
    assert busy(server) == {"a": 0, "b": 0}
    a.break_after, a.hang = None, True  # no first byte in time: b answers
    assert (await post(server, chat()))[0] == 200
    assert busy(server) == {"a": 0, "b": 0}

    # A stream in progress counts, and a caller who leaves ends it.
    a.hang, a.chunk_delay = False, 0.2
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH, json=chat(stream=True)) as answer:
        await answer.content.readline()
        assert busy(server) == {"a": 1, "b": 0}
    await eventually(lambda: a.cancelled == 1)
    await eventually(lambda: idle(server))


async def test_calls_in_progress_spread_calls_beyond_the_weights(
        make_gateway: MakeGateway, upstreams: tuple[ReferenceUpstream, ReferenceUpstream]) -> None:
    a, b = upstreams
    server = await start(make_gateway, a, b, weight=2)
    # One at a time, a always wins: it weighs more.
    for _ in range(3):
        assert (await post(server, chat()))[0] == 200
    assert (len(a.received), len(b.received)) == (3, 0)

    # Four at once, none answered yet: a takes the first, b the second (a is busier), a the
    # third (as busy as b, heavier), b the fourth.
    a.hang = b.hang = True
    calls = [asyncio.create_task(post(server, chat())) for _ in range(4)]
    await eventually(lambda: a.active + b.active == 4)
    assert (a.active, b.active) == (2, 2)
    assert busy(server) == {"a": 2, "b": 2}
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await eventually(lambda: idle(server))
