"""Failover: a failure before the first byte moves the call to the next target."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import openai
import pytest
from bytes_upstream import BytesUpstream
from prometheus_client.parser import text_string_to_metric_families

from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, ReferenceUpstream, eventually
from first_proxy.types import Status

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "are you there"}]}


@pytest.fixture
async def upstreams() -> AsyncIterator[list[ReferenceUpstream]]:
    """Three started reference upstreams."""
    started = [ReferenceUpstream() for _ in range(3)]
    for upstream in started:
        await upstream.start()
    yield started
    for upstream in started:
        await upstream.close()


@pytest.fixture
def closed_url() -> str:
    """A URL on a loopback port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def target(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "reference", "url": url, **extra}


async def start(make_gateway: Any, *targets: dict[str, Any]) -> GatewayServer:
    return await make_gateway({"models": {MODEL: {"targets": list(targets)}}},
                              plugins=[ReferenceBackend()])


async def post(server: GatewayServer, body: dict[str, Any] = CHAT, endpoint: str = "chat/completions",
               ) -> tuple[int, Mapping[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/{endpoint}", headers=AUTH, json=body) as response:
        return response.status, response.headers.copy(), await response.read()




async def upstream_errors(server: GatewayServer) -> dict[tuple[str, str], float]:
    """``first_proxy_upstream_errors`` from GET /metrics, by (target, kind)."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name == "first_proxy_upstream_errors":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["model"] == MODEL:
                    found[sample.labels["target"], sample.labels["kind"]] = sample.value
    return found


async def test_refused_connection_fails_over(make_gateway: Any, upstreams: list[ReferenceUpstream],
                                             closed_url: str) -> None:
    server = await start(make_gateway, target("a", closed_url), target("b", upstreams[0].url))
    status, headers, body = await post(server)
    assert status == 200
    assert headers["X-First-Target"] == "b"
    assert json.loads(body)["choices"][0]["message"]["content"] == "are you there"
    row = await server.log_row(headers["X-Request-Id"])
    assert (row["status"], row["target"], row["attempts"]) == (200, "b", 2)
    assert await upstream_errors(server) == {("a", "connect"): 1.0}


@pytest.mark.parametrize(("fail", "kind"), [(500, "status"), (503, "status"), (429, "busy")])
async def test_error_status_fails_over(make_gateway: Any, upstreams: list[ReferenceUpstream],
                                       fail: int, kind: str) -> None:
    first, second, _ = upstreams
    first.fail_status = fail
    server = await start(make_gateway, target("a", first.url), target("b", second.url))
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "b")
    assert (len(first.received), len(second.received)) == (1, 1)
    row = await server.log_row(headers["X-Request-Id"])
    assert row["attempts"] == 2
    assert await upstream_errors(server) == {("a", kind): 1.0}


async def test_hanging_target_fails_over_after_first_byte_timeout(
        make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    first, second, _ = upstreams
    first.hang = True
    server = await start(make_gateway, target("a", first.url, timeouts={"first_byte": 0.3}),
                         target("b", second.url))
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "b")
    # The abandoned attempt was hung up on, not left running.
    await eventually(lambda: first.cancelled == 1)
    assert await upstream_errors(server) == {("a", "timeout"): 1.0}


async def test_third_target_answers_when_two_fail(
        make_gateway: Any, upstreams: list[ReferenceUpstream], closed_url: str) -> None:
    upstreams[1].fail_status = 502
    server = await start(make_gateway, target("a", closed_url), target("b", upstreams[1].url),
                         target("c", upstreams[2].url))
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "c")
    row = await server.log_row(headers["X-Request-Id"])
    assert (row["attempts"], row["target"]) == (3, "c")


async def test_all_failing_is_502(make_gateway: Any, upstreams: list[ReferenceUpstream],
                                  closed_url: str) -> None:
    upstreams[0].fail_status = 500
    server = await start(make_gateway, target("a", closed_url), target("b", upstreams[0].url))
    status, headers, body = await post(server)
    assert status == 502
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_error")
    assert "a: cannot reach" in error["message"] and "b: HTTP 500" in error["message"]
    assert "reference upstream failing with 500" in error["message"]
    row = await server.log_row(headers["X-Request-Id"])
    assert (row["status"], row["attempts"], row["error"]) == (502, 2, "upstream_error")


NOT_OBJECTS = [
    pytest.param("text/html", b"<html><body><h1>Welcome to nginx!</h1></body></html>", id="html"),
    pytest.param("application/json", b'[{"id": "chatcmpl-1"}]', id="json-array"),
    pytest.param("application/json", b'"ok"', id="json-string"),
    pytest.param("application/json", b'{"id": "chatcmpl-1", "choices": [', id="cut-off"),
    pytest.param("application/json", b"", id="empty"),
]


@pytest.mark.parametrize(("content_type", "answer"), NOT_OBJECTS)
async def test_a_200_that_is_not_a_json_object_fails_over(
        make_gateway: Any, upstreams: list[ReferenceUpstream], bytes_upstream: BytesUpstream,
        content_type: str, answer: bytes) -> None:
    bytes_upstream.content_type, bytes_upstream.answer = content_type, answer
    server = await start(make_gateway, target("a", bytes_upstream.url), target("b", upstreams[0].url))
    status, headers, body = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "b")
    assert json.loads(body)["choices"][0]["message"]["content"] == "are you there"
    assert len(bytes_upstream.bodies) == 1
    assert await upstream_errors(server) == {("a", "invalid"): 1.0}


@pytest.mark.parametrize(("content_type", "answer"), NOT_OBJECTS)
async def test_a_200_that_is_not_a_json_object_from_the_only_target_is_502(
        make_gateway: Any, bytes_upstream: BytesUpstream, content_type: str, answer: bytes) -> None:
    bytes_upstream.content_type, bytes_upstream.answer = content_type, answer
    server = await start(make_gateway, target("a", bytes_upstream.url))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(**CHAT)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert "a: HTTP 200 with an answer that is not a JSON object" in caught.value.message
    assert "nginx" not in caught.value.message
    assert await upstream_errors(server) == {("a", "invalid"): 1.0}


@pytest.mark.parametrize("refusal", [401, 403])
async def test_a_target_refusing_the_gateways_credential_fails_over_then_502(
        make_gateway: Any, upstreams: list[ReferenceUpstream], refusal: int) -> None:
    first, second, _ = upstreams
    first.fail_status = refusal
    server = await start(make_gateway, target("a", first.url), target("b", second.url))
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "b")
    assert await upstream_errors(server) == {("a", "credential"): 1.0}

    second.fail_status = refusal
    status, _, body = await post(server)
    assert status == 502
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_error")
    assert f"a: HTTP {refusal}: the target refused the gateway's credential" in error["message"]
    assert f"b: HTTP {refusal}: the target refused the gateway's credential" in error["message"]


async def test_all_timing_out_is_504(make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    quick = {"first_byte": 0.2}
    for upstream in upstreams[:2]:
        upstream.hang = True
    server = await start(make_gateway, target("a", upstreams[0].url, timeouts=quick),
                         target("b", upstreams[1].url, timeouts=quick))
    status, headers, body = await post(server)
    assert status == 504
    assert json.loads(body)["error"]["code"] == "upstream_timeout"
    row = await server.log_row(headers["X-Request-Id"])
    assert (row["status"], row["attempts"]) == (504, 2)


async def test_all_busy_is_429_with_retry_after(
        make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    for upstream in upstreams[:2]:
        upstream.fail_status = 429
    server = await start(make_gateway, target("a", upstreams[0].url), target("b", upstreams[1].url))
    status, headers, body = await post(server)
    assert status == 429
    assert int(headers["Retry-After"]) > 0
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "upstream_busy")

    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(**CHAT)


async def test_client_error_is_passed_through_in_openai_shape(
        make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    first, second, _ = upstreams
    first.fail_status = 400
    server = await start(make_gateway, target("a", first.url), target("b", second.url))
    status, headers, body = await post(server)
    assert status == 400
    assert headers["X-First-Target"] == "a"
    # OpenAI's shape: a type that fits the status, a string code or null.
    assert json.loads(body) == {"error": {
        "message": "reference upstream failing with 400", "type": "invalid_request_error",
        "param": None, "code": None}}
    assert not second.received  # a caller's mistake is not retried elsewhere
    row = await server.log_row(headers["X-Request-Id"])
    assert (row["status"], row["attempts"]) == (400, 1)


async def test_upstream_404_reaches_the_sdk_as_not_found(
        make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    server = await start(make_gateway, target("a", upstreams[0].url, model="not-loaded-here"))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(**CHAT)
    # The caller reads the gateway's name of the model, never the upstream's.
    assert caught.value.body == {"message": f"The model `{MODEL}` does not exist.",
                                 "type": "not_found_error", "param": None, "code": None}
    assert caught.value.status_code == 404


async def test_selection_prefers_targets_known_to_be_up(
        make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    first, second, _ = upstreams
    server = await start(make_gateway, target("a", first.url), target("b", second.url))
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "a")

    a_key = server.gateway.config.models[MODEL].targets[0].key
    server.gateway.statuses[a_key] = Status(reachable=False)
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "b")
    assert (len(first.received), len(second.received)) == (1, 1)
    row = await server.log_row(headers["X-Request-Id"])
    assert row["attempts"] == 1


async def test_target_known_down_is_still_tried_last(
        make_gateway: Any, upstreams: list[ReferenceUpstream]) -> None:
    first, second, _ = upstreams
    second.fail_status = 503
    server = await start(make_gateway, target("a", first.url), target("b", second.url))
    server.gateway.statuses[f"{MODEL}/a"] = Status(reachable=False)
    status, headers, _ = await post(server)
    assert (status, headers["X-First-Target"]) == (200, "a")
    assert len(second.received) == 1


@pytest.mark.parametrize("failure", ["status", "break", "hang"])
async def test_stream_fails_over_before_its_first_byte(
        make_gateway: Any, upstreams: list[ReferenceUpstream], failure: str) -> None:
    first, second, _ = upstreams
    if failure == "status":
        first.fail_status = 503
    elif failure == "break":
        first.break_after = 0
    else:
        first.hang = True
    server = await start(make_gateway, target("a", first.url, timeouts={"first_byte": 0.3}),
                         target("b", second.url))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert raw.headers["X-First-Target"] == "b"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "are you there"
    assert len(first.received) == 1
    row = await server.log_row(raw.headers["X-Request-Id"])
    assert (row["status"], row["target"], row["attempts"], row["stream"]) == (200, "b", 2, True)
    assert sum((await upstream_errors(server)).values()) == 1
