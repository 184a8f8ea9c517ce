"""Every error the gateway gives, over real HTTP: its status and OpenAI's exact error shape."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from bytes_upstream import BytesUpstream

from first_proxy import (
    Backend,
    Call,
    Denial,
    Gateway,
    Target,
    UpstreamResponse,
    hookimpl,
    post_openai,
)
from first_proxy.testing import (
    TEST_KEY,
    GatewayServer,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    api_keys,
)

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
ADMIN_KEY = "sk-admin-0123456789"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}

#: The OpenAI ``type`` each status comes with.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
         503: "service_unavailable"}


ANY = object()


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str | None = None,
                       param: object = None) -> dict[str, Any]:
    """Check status, content type, request id and the exact error shape; the error object."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    assert response.headers.get("X-Request-Id")
    body = orjson.loads(text)
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"].strip()
    assert error["type"] == TYPES[status]
    if param is ANY:
        assert error["param"] is None or isinstance(error["param"], str)
    else:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    else:
        assert isinstance(error["code"], str) and error["code"]
    return error


def reference_target(upstream: ReferenceUpstream, name: str = "a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "reference", "url": upstream.url, **extra}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server(make_gateway: MakeGateway, reference_upstream: ReferenceUpstream) -> GatewayServer:
    """A gateway serving ``reference-model`` from the reference upstream."""
    return await make_gateway({"models": {MODEL: {"targets": [reference_target(reference_upstream)]}}},
                              plugins=[ReferenceBackend()])


async def post(http: aiohttp.ClientSession, server: GatewayServer, endpoint: str, data: Any,
               headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    """POST ``data`` (bytes as they are, anything else as JSON) with the test key."""
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    response = await http.post(f"{server.base_url}/{endpoint}", data=raw,
                               headers={**AUTH, "Content-Type": "application/json", **(headers or {})})
    await response.read()
    return response


# -- 400: the request body ----------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "body", "code", "param"), [
    ("chat/completions", b"", "invalid_json", None),
    ("chat/completions", b"  \n ", "invalid_json", None),
    ("chat/completions", b'{"model": "reference-model", "messages": [', "invalid_json", None),
    ("chat/completions", b'[{"model": "reference-model"}]', "invalid_json", None),
    ("chat/completions", {"messages": CHAT["messages"]}, "missing_required_parameter", "model"),
    ("chat/completions", {**CHAT, "model": 7}, "invalid_type", "model"),
    ("chat/completions", {**CHAT, "model": ""}, "invalid_type", "model"),
    ("chat/completions", {**CHAT, "model": "   "}, "invalid_type", "model"),
    ("chat/completions", {**CHAT, "stream": "true"}, "invalid_type", "stream"),
    ("chat/completions", {**CHAT, "stream": 1}, "invalid_type", "stream"),
    ("chat/completions", {"model": MODEL}, "missing_required_parameter", "messages"),
    ("chat/completions", {"model": MODEL, "messages": "hi"}, "invalid_type", "messages"),
    ("chat/completions", {"model": MODEL, "messages": []}, "invalid_type", "messages"),
    ("completions", {"model": MODEL, "prompt": 42}, "invalid_type", "prompt"),
    ("embeddings", {"model": MODEL}, "missing_required_parameter", "input"),
    ("embeddings", {"model": MODEL, "input": {"text": "x"}}, "invalid_type", "input"),
    ("embeddings", {"model": MODEL, "input": "x", "stream": True}, "invalid_value", "stream"),
])
async def test_bad_bodies_get_400(http: aiohttp.ClientSession, server: GatewayServer,
                                  reference_upstream: ReferenceUpstream, endpoint: str, body: Any,
                                  code: str, param: str | None) -> None:
    response = await post(http, server, endpoint, body)
    await expect_error(response, 400, code, param)
    assert not reference_upstream.received


async def test_a_400_names_what_to_fix(http: aiohttp.ClientSession, server: GatewayServer) -> None:
    error = await expect_error(await post(http, server, "chat/completions", {"model": MODEL}), 400,
                               "missing_required_parameter", "messages")
    assert "'messages'" in error["message"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP"])
async def test_a_body_not_in_its_content_encoding_is_400(http: aiohttp.ClientSession,
                                                         server: GatewayServer,
                                                         reference_upstream: ReferenceUpstream,
                                                         encoding: str) -> None:
    response = await post(http, server, "chat/completions", CHAT, {"Content-Encoding": encoding})
    error = await expect_error(response, 400, "invalid_body")
    assert repr(encoding) in error["message"] and "Content-Encoding" in error["message"]
    assert not reference_upstream.received
    assert (await post(http, server, "chat/completions", CHAT)).status == 200


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_body_compressed_as_announced_is_served(http: aiohttp.ClientSession,
                                                        server: GatewayServer,
                                                        reference_upstream: ReferenceUpstream,
                                                        encoding: str, compress: Any) -> None:
    response = await post(http, server, "chat/completions", compress(orjson.dumps(CHAT)),
                          {"Content-Encoding": encoding})
    assert response.status == 200
    assert reference_upstream.received[-1].body == CHAT


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-7", "messages": [{"role": "user", "content": "hi"}], "model": "reference-model"}',
    b'{"model": "gpt-7", "messages": [{"role": "user", "content": "hi"}], "mod\\u0065l": "reference-model"}',
    b'{"model":"reference-model","messages":[{"role":"user","content":"hi"}],"model" :"reference-model"}',
])
async def test_a_body_giving_model_twice_is_400(http: aiohttp.ClientSession, server: GatewayServer,
                                                reference_upstream: ReferenceUpstream,
                                                raw: bytes) -> None:
    error = await expect_error(await post(http, server, "chat/completions", raw), 400,
                               "duplicate_parameter", "model")
    assert "'model'" in error["message"]
    assert not reference_upstream.received


@pytest.mark.parametrize("twice", [None, "k7", "k4999"])
async def test_a_body_of_many_keys_is_checked_for_duplicates(
        http: aiohttp.ClientSession, server: GatewayServer, reference_upstream: ReferenceUpstream,
        twice: str | None) -> None:
    raw = orjson.dumps({**CHAT, **{f"k{i}": i for i in range(5000)}})
    if twice:
        raw = raw[:-1] + b', "%s": 0}' % twice.encode()
    response = await post(http, server, "chat/completions", raw)
    if twice:
        error = await expect_error(response, 400, "duplicate_parameter", twice)
        assert repr(twice) in error["message"]
    else:
        assert response.status == 200
        assert len(reference_upstream.received[-1].body) == 5002


async def test_keys_spelled_once_are_not_duplicates(http: aiohttp.ClientSession,
                                                     server: GatewayServer,
                                                     reference_upstream: ReferenceUpstream) -> None:
    # The key's name as a value, and as a key of a nested object, is not a second key.
    body = {**CHAT, "messages": [{"role": "user", "content": '"model": "gpt-7"'}],
            "metadata": {"model": "gpt-7", "messages": []}, "user": "model"}
    raw = orjson.dumps(body).replace(b'"user":', b'"\\u0075ser":')
    assert (await post(http, server, "chat/completions", raw)).status == 200
    assert reference_upstream.received[-1].body == body


async def test_a_completion_prompt_may_be_null_or_empty(http: aiohttp.ClientSession,
                                                         make_gateway: MakeGateway,
                                                         bytes_upstream: BytesUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": bytes_upstream.url}]}}},
        plugins=[ReferenceBackend()])
    for raw in [b'{"model": "reference-model", "prompt": null}',
                b'{"model": "reference-model", "prompt": []}',
                b'{"model": "reference-model"}']:
        assert (await post(http, server, "completions", raw)).status == 200
        assert bytes_upstream.bodies[-1] == raw


# -- 401: who is calling --------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "missing_credentials"),
    ({"Authorization": "Bearer sk-not-a-known-key"}, "invalid_api_key"),
    ({"Authorization": f"Basic {TEST_KEY}"}, "invalid_authorization"),
    ({"Authorization": TEST_KEY}, "invalid_authorization"),
    ({"Authorization": "Bearer"}, "invalid_authorization"),
    ({"Authorization": "Bearer   "}, "invalid_authorization"),
    ({"Authorization": f"Bearer {TEST_KEY}x"}, "invalid_api_key"),
])
async def test_unknown_or_missing_credentials_get_401(http: aiohttp.ClientSession,
                                                      server: GatewayServer,
                                                      reference_upstream: ReferenceUpstream,
                                                      headers: dict[str, str], code: str) -> None:
    for method, path, body in [("POST", "/chat/completions", CHAT), ("GET", "/models", None),
                               ("GET", f"/models/{MODEL}", None)]:
        async with http.request(method, server.base_url + path, json=body,
                                headers=headers) as response:
            error = await expect_error(response, 401, code)
        secret = headers.get("Authorization", "").removeprefix("Bearer").removeprefix("Basic")
        if secret.strip():
            assert secret.strip() not in error["message"]
    assert not reference_upstream.received


async def test_the_bearer_scheme_is_case_insensitive(http: aiohttp.ClientSession,
                                                     server: GatewayServer) -> None:
    async with http.post(f"{server.base_url}/chat/completions", json=CHAT,
                         headers={"Authorization": f"bearer {TEST_KEY}"}) as response:
        assert response.status == 200


async def test_authentication_comes_before_reading_the_body(http: aiohttp.ClientSession,
                                                            server: GatewayServer) -> None:
    async with http.post(f"{server.base_url}/chat/completions", data=b"not json") as response:
        await expect_error(response, 401, "missing_credentials")


# -- 403: allowed_groups --------------------------------------------------------------------


async def test_model_allowed_groups_refuse_outsiders(http: aiohttp.ClientSession,
                                                     make_gateway: MakeGateway,
                                                     reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({
        "auth": api_keys({"name": "admin", "key": ADMIN_KEY, "groups": ["admins"]}),
        "models": {MODEL: {"allowed_groups": ["admins"],
                           "targets": [reference_target(reference_upstream)]}},
    }, plugins=[ReferenceBackend()])
    error = await expect_error(await post(http, server, "chat/completions", CHAT), 403,
                               "group_not_allowed")
    assert "admins" in error["message"]
    assert not reference_upstream.received
    allowed = await post(http, server, "chat/completions", CHAT,
                         {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert allowed.status == 200


async def test_target_allowed_groups_pick_the_target_the_caller_may_use(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({
        "auth": api_keys({"name": "admin", "key": ADMIN_KEY, "groups": ["admins"]}),
        "models": {MODEL: {"targets": [
            reference_target(reference_upstream, "private", allowed_groups=["admins"]),
            reference_target(reference_upstream, "public"),
        ]}},
    }, plugins=[ReferenceBackend()])
    tester = await post(http, server, "chat/completions", CHAT)
    assert tester.status == 200
    assert tester.headers["X-First-Target"] == "public"
    admin = await post(http, server, "chat/completions", CHAT,
                       {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin.status == 200
    assert admin.headers["X-First-Target"] == "private"


async def test_every_target_restricted_is_403(http: aiohttp.ClientSession,
                                              make_gateway: MakeGateway,
                                              reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [
        reference_target(reference_upstream, "one", allowed_groups=["admins"]),
        reference_target(reference_upstream, "two", allowed_groups=["physics"]),
    ]}}}, plugins=[ReferenceBackend()])
    error = await expect_error(await post(http, server, "chat/completions", CHAT), 403,
                               "group_not_allowed")
    assert "'one'" in error["message"]
    assert not reference_upstream.received


# -- 404, 405, 413 ------------------------------------------------------------------------


async def test_an_unknown_model_is_404(http: aiohttp.ClientSession, server: GatewayServer) -> None:
    for endpoint, body in [("chat/completions", {**CHAT, "model": "gpt-7"}),
                           ("completions", {"model": "gpt-7", "prompt": "x"}),
                           ("embeddings", {"model": "gpt-7", "input": "x"})]:
        error = await expect_error(await post(http, server, endpoint, body), 404,
                                   "model_not_found", "model")
        assert "'gpt-7'" in error["message"]
    async with http.get(f"{server.base_url}/models/gpt-7", headers=AUTH) as response:
        await expect_error(response, 404, "model_not_found", "model")


async def test_a_pinned_path_the_model_is_not_on_is_404_listing_where_it_is(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [
        reference_target(reference_upstream, "local"),
        reference_target(reference_upstream, "polaris", cluster="polaris", framework="vllm"),
    ]}}}, plugins=[ReferenceBackend()])
    async with http.post(f"{server.url}/resource_server/sophia/vllm/v1/chat/completions",
                         json=CHAT, headers=AUTH) as response:
        error = await expect_error(response, 404, "model_not_found", "model")
    assert "sophia/vllm" in error["message"]
    assert "/resource_server/local/reference/v1, /resource_server/polaris/vllm/v1" in error["message"]
    async with http.post(f"{server.url}/resource_server/polaris/vllm/v1/chat/completions",
                         json=CHAT, headers=AUTH) as response:
        assert (response.status, response.headers["X-First-Target"]) == (200, "polaris")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/nothing"), ("POST", "/v2/chat/completions"), ("GET", "/"),
    ("POST", "/v1/chat/completion"), ("GET", "/resource_server/v1/nothing"),
])
async def test_an_unknown_route_is_404(http: aiohttp.ClientSession, server: GatewayServer,
                                       method: str, path: str) -> None:
    async with http.request(method, server.url + path, headers=AUTH) as response:
        error = await expect_error(response, 404, "unknown_route")
    assert path in error["message"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v1/chat/completions", "POST"),
    ("PUT", "/v1/embeddings", "POST"),
    ("DELETE", "/v1/models", "GET"),
    ("POST", "/health", "GET"),
])
async def test_a_wrong_method_is_405(http: aiohttp.ClientSession, server: GatewayServer,
                                     method: str, path: str, allowed: str) -> None:
    async with http.request(method, server.url + path, headers=AUTH) as response:
        await expect_error(response, 405, "method_not_allowed")
        assert allowed in response.headers["Allow"]


async def test_a_body_over_max_body_bytes_is_413(http: aiohttp.ClientSession,
                                                 make_gateway: MakeGateway,
                                                 reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"server": {"max_body_bytes": 2048},
                                 "models": {MODEL: {"targets": [reference_target(reference_upstream)]}}},
                                plugins=[ReferenceBackend()])
    small = {**CHAT, "messages": [{"role": "user", "content": "x" * 1500}]}
    assert (await post(http, server, "chat/completions", small)).status == 200
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    error = await expect_error(await post(http, server, "chat/completions", big), 413,
                               "request_too_large")
    assert "2048" in error["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 1024
    async with http.post(f"{server.base_url}/completions", data=chunks(), headers=AUTH) as response:
        await expect_error(response, 413, "request_too_large")
    assert len(reference_upstream.received) == 1
    assert (await post(http, server, "chat/completions", small)).status == 200


# -- 429 ---------------------------------------------------------------------------------


async def test_the_gateway_rate_limit_is_429_with_retry_after(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({
        "limits": {"requests_per_minute": 2},
        "auth": api_keys({"name": "admin", "key": ADMIN_KEY, "groups": ["admins"]}),
        "models": {MODEL: {"targets": [reference_target(reference_upstream)]}},
    }, plugins=[ReferenceBackend()])
    statuses = [(await post(http, server, "chat/completions", CHAT)).status for _ in range(2)]
    assert statuses == [200, 200]
    limited = await post(http, server, "chat/completions", CHAT)
    error = await expect_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["Retry-After"]) >= 1
    assert "2 requests per minute" in error["message"]
    assert len(reference_upstream.received) == 2
    # The limit is per caller: another key still has its own allowance.
    other = await post(http, server, "chat/completions", CHAT, {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert other.status == 200


async def test_a_keys_own_rate_limit_is_429_with_retry_after(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({
        "limits": {"requests_per_minute": 1000},
        "auth": api_keys({"name": "batch", "key": ADMIN_KEY, "requests_per_minute": 1}),
        "models": {MODEL: {"targets": [reference_target(reference_upstream)]}},
    }, plugins=[ReferenceBackend()])
    batch = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert (await post(http, server, "chat/completions", CHAT, batch)).status == 200
    limited = await post(http, server, "chat/completions", CHAT, batch)
    await expect_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["Retry-After"]) >= 1
    for _ in range(3):
        assert (await post(http, server, "chat/completions", CHAT)).status == 200


class Limited:
    """Refuses every call for ``wait`` more seconds."""

    def __init__(self, wait: float) -> None:
        self.wait = wait

    @hookimpl
    def check_limits(self) -> Denial:
        return Denial("Over this site's budget.", status=429, code="budget_exceeded",
                      retry_after=self.wait)


@pytest.mark.parametrize(("wait", "header"), [(2.4, "3"), (2.0, "2"), (0.01, "1"), (59.5, "60")])
async def test_retry_after_is_the_wait_rounded_up(http: aiohttp.ClientSession,
                                                   make_gateway: MakeGateway,
                                                   reference_upstream: ReferenceUpstream,
                                                   wait: float, header: str) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [reference_target(reference_upstream)]}}},
                                plugins=[ReferenceBackend(), Limited(wait)])
    limited = await post(http, server, "chat/completions", CHAT)
    await expect_error(limited, 429, "budget_exceeded")
    # A client that waits exactly this long (the openai SDK does) is not refused again.
    assert limited.headers["Retry-After"] == header


async def test_listing_models_does_not_count_against_the_limit(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"limits": {"requests_per_minute": 1},
                                 "models": {MODEL: {"targets": [reference_target(reference_upstream)]}}},
                                plugins=[ReferenceBackend()])
    for _ in range(3):
        async with http.get(f"{server.base_url}/models", headers=AUTH) as response:
            assert response.status == 200
    assert (await post(http, server, "chat/completions", CHAT)).status == 200


# -- 500 and 503: plugins that fail ----------------------------------------------------------

SECRET_TEXT = "plugin internals: s3cr3t-detail"


class ExplodingPlugin:
    """Raises an unexpected exception from ``hook`` when a request carries X-Explode."""

    def __init__(self, hook: str) -> None:
        self.hook = hook

    def _maybe_raise(self, hook: str, explode: bool) -> None:
        if hook == self.hook and explode:
            raise RuntimeError(SECRET_TEXT)

    @hookimpl(tryfirst=True)
    def authenticate(self, request: web.Request) -> None:
        self._maybe_raise("authenticate", "X-Explode" in request.headers)

    @hookimpl
    def register_backends(self, register: Callable[[Backend], None]) -> None:
        plugin = self

        class Exploding(Backend):
            name = "exploding"

            async def dispatch(self, target: Target, call: Call,
                               gateway: Gateway) -> UpstreamResponse:
                plugin._maybe_raise("dispatch", call.body.get("explode") is True)
                return await post_openai(gateway, target, call)

        register(Exploding())


@pytest.mark.parametrize("hook", ["authenticate", "dispatch"])
async def test_a_plugin_exception_is_a_clean_500(http: aiohttp.ClientSession,
                                                 make_gateway: MakeGateway,
                                                 reference_upstream: ReferenceUpstream,
                                                 caplog: pytest.LogCaptureFixture,
                                                 hook: str) -> None:
    target = {**reference_target(reference_upstream), "backend": "exploding"}
    server = await make_gateway({"models": {MODEL: {"targets": [target]}}},
                                plugins=[ExplodingPlugin(hook)])
    caplog.set_level(logging.ERROR, logger="first_proxy")
    response = await post(http, server, "chat/completions", {**CHAT, "explode": True},
                          {"X-Explode": "1"})
    error = await expect_error(response, 500, "internal_error")
    text = await response.text()
    assert SECRET_TEXT not in text
    assert "Traceback" not in text and "RuntimeError" not in text and ".py" not in text
    request_id = response.headers["X-Request-Id"]
    assert request_id in error["message"]
    # The operator gets the whole story in the log, under the same request id.
    (record,) = [r for r in caplog.records if r.exc_info]
    assert request_id in record.getMessage()
    assert SECRET_TEXT in caplog.text
    # ... and the gateway goes on serving.
    assert (await post(http, server, "chat/completions", CHAT)).status == 200
    assert reference_upstream.received[-1].body == CHAT
    assert server.gateway.request_log is not None
    await server.gateway.request_log.flush()
    assert server.gateway.store is not None
    rows = await server.gateway.store.recent_requests(2)
    assert [(r["status"], r["error"]) for r in rows] == [(200, None), (500, "internal_error")]


class NoTargets:
    @hookimpl(tryfirst=True)
    def select_target(self, candidates: Sequence[Target]) -> list[Target]:
        return []


async def test_select_target_ruling_out_every_target_is_503(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [reference_target(reference_upstream)]}}},
                                plugins=[ReferenceBackend(), NoTargets()])
    error = await expect_error(await post(http, server, "chat/completions", CHAT), 503,
                               "no_target_available")
    assert "/status" in error["message"]
    assert not reference_upstream.received


# -- request ids ----------------------------------------------------------------------------


async def test_a_safe_request_id_is_kept_and_an_unsafe_one_replaced(
        http: aiohttp.ClientSession, server: GatewayServer) -> None:
    kept = await post(http, server, "chat/completions", {"model": MODEL},
                      {"X-Request-Id": "job-42.step_7"})
    await expect_error(kept, 400, param="messages")
    assert kept.headers["X-Request-Id"] == "job-42.step_7"
    for unsafe in ["has spaces", "x" * 65, "semi;colon", "<script>"]:
        replaced = await post(http, server, "chat/completions", {"model": MODEL},
                              {"X-Request-Id": unsafe})
        await expect_error(replaced, 400, param="messages")
        assert replaced.headers["X-Request-Id"] != unsafe
        assert len(replaced.headers["X-Request-Id"]) == 32


# -- a sweep of garbage ---------------------------------------------------------------------

_DEEP = 100_000
GARBAGE: list[tuple[str, bytes]] = [
    ("chat/completions", b"\xff\xfe\xfd\x00"),
    ("chat/completions", b'{"model": "reference-model\xff", "messages": [{"role": "user"}]}'),
    ("chat/completions", b"\xef\xbb\xbf" + orjson.dumps(CHAT)),
    ("chat/completions", b"\x00" * 64),
    ("chat/completions", b"[" * _DEEP + b"]" * _DEEP),
    ("chat/completions", b'{"a":' * _DEEP + b"1" + b"}" * _DEEP),
    ("chat/completions", b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b', "messages": [1]}'),
    ("chat/completions", b"42"),
    ("chat/completions", b"-1.5e308"),
    ("chat/completions", b"1e999999"),
    ("chat/completions", b"null"),
    ("chat/completions", b"true"),
    ("chat/completions", b'"reference-model"'),
    ("chat/completions", b"[]"),
    ("chat/completions", b"{"),
    ("chat/completions", b'{"model": "reference-model",}'),
    ("chat/completions", b"{'model': 'reference-model'}"),
    ("chat/completions", b'{"model": NaN, "messages": []}'),
    ("chat/completions", b'{"model": "\\ud800", "messages": [{"role": "user"}]}'),
    ("chat/completions", orjson.dumps(CHAT) + b" trailing"),
    ("chat/completions", orjson.dumps(CHAT) * 2),
    ("chat/completions", orjson.dumps({**CHAT, "model": None})),
    ("chat/completions", orjson.dumps({**CHAT, "model": ["reference-model"]})),
    ("chat/completions", orjson.dumps({**CHAT, "model": {"id": "reference-model"}})),
    ("chat/completions", orjson.dumps({**CHAT, "model": True})),
    ("chat/completions", orjson.dumps({**CHAT, "model": 1e308})),
    ("chat/completions", orjson.dumps({**CHAT, "model": "x" * 100_000})),
    ("chat/completions", orjson.dumps({**CHAT, "model": "\x00"})),
    ("chat/completions", orjson.dumps({**CHAT, "messages": {"role": "user"}})),
    ("chat/completions", orjson.dumps({**CHAT, "messages": None})),
    ("chat/completions", orjson.dumps({**CHAT, "stream": None, "messages": 0})),
    ("chat/completions", orjson.dumps({**CHAT, "stream": [True]})),
    ("chat/completions", orjson.dumps({**CHAT, "stream": "false"})),
    ("completions", orjson.dumps({"model": MODEL, "prompt": {"text": "x"}})),
    ("embeddings", orjson.dumps({"model": MODEL, "input": 3.5})),
    ("embeddings", orjson.dumps({"model": MODEL, "input": "x", "stream": True})),
]


@pytest.mark.parametrize(("endpoint", "raw"), GARBAGE, ids=[f"{i:02d}" for i in range(len(GARBAGE))])
async def test_garbage_never_gets_a_5xx(http: aiohttp.ClientSession, server: GatewayServer,
                                       reference_upstream: ReferenceUpstream, endpoint: str,
                                       raw: bytes) -> None:
    response = await post(http, server, endpoint, raw)
    assert 400 <= response.status < 500
    await expect_error(response, response.status, param=ANY)
    assert not reference_upstream.received
    # The next request is served as usual.
    assert (await post(http, server, "chat/completions", CHAT)).status == 200


async def test_fields_the_gateway_does_not_need_pass_through_untouched(
        http: aiohttp.ClientSession, server: GatewayServer,
        reference_upstream: ReferenceUpstream) -> None:
    body = {**CHAT, "temperature": "hot", "max_tokens": None, "x-site": {"deep": [[None]]},
            "ünïcode": "☃"}
    response = await post(http, server, "chat/completions", body)
    assert response.status == 200
    assert reference_upstream.received[-1].body == body


# -- bodies forwarded as written ------------------------------------------------------------

#: Values a parse and re-serialization would change: a 101-bit integer, float spellings,
#: escapes, key order, and nesting deeper than orjson writes (254 levels).
AS_WRITTEN = (b'{ "seed" : 1267650600228229401496703205376, "temperature": 1.50,'
              b' "top_p": 1E-2, "zeta": "\\u00e9\\/", "model" : "reference-model",\n'
              b' "messages": [{"role": "user", "content": "hi"}], "alpha": -0.0,'
              b' "x-deep": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}")


async def test_a_renamed_model_is_the_only_change_the_upstream_sees(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        bytes_upstream: BytesUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": bytes_upstream.url, "model": "up/model-7"}]}}},
        plugins=[ReferenceBackend()])
    assert (await post(http, server, "chat/completions", AS_WRITTEN)).status == 200
    assert bytes_upstream.bodies[-1] == AS_WRITTEN.replace(b'"reference-model"', b'"up/model-7"')


def nested(levels: int) -> bytes:
    """A chat request nested ``levels`` deep, the outer object included."""
    inner = levels - 1
    return orjson.dumps(CHAT)[:-1] + b', "x-deep": ' + b"[" * inner + b"]" * inner + b"}"


async def test_a_body_nested_512_levels_is_edited_and_one_deeper_is_400(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        bytes_upstream: BytesUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": bytes_upstream.url, "model": "up/model-7"}]}}},
        plugins=[ReferenceBackend()])
    assert (await post(http, server, "chat/completions", nested(512))).status == 200
    assert bytes_upstream.bodies[-1] == nested(512).replace(b'"reference-model"', b'"up/model-7"')
    # Every depth orjson reads (up to 1,024) but the edit could not walk from the request's
    # own place on the stack (Python's 1,000 frames, the gateway's included) is refused.
    for levels in [513, 800, 970, 980, 990, 1000, 1024]:
        assert orjson.loads(nested(levels))["model"] == MODEL
        error = await expect_error(await post(http, server, "chat/completions", nested(levels)),
                                   400, "invalid_json")
        assert "nested too deeply" in error["message"] and "512 levels" in error["message"]
    assert len(bytes_upstream.bodies) == 1


# -- what the headers reveal -----------------------------------------------------------------


@pytest.mark.parametrize(("settings", "name", "exposed"), [
    ({}, "first-proxy", True),
    ({"server_header": "site-gateway", "expose_target": False}, "site-gateway", False),
])
async def test_the_server_header_and_target_name_follow_the_settings(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream, settings: dict[str, Any], name: str,
        exposed: bool) -> None:
    server = await make_gateway({"server": settings, "models": {MODEL: {"targets": [
        reference_target(reference_upstream, "site-a100-node7")]}}}, plugins=[ReferenceBackend()])
    ok = await post(http, server, "chat/completions", CHAT)
    streamed = await post(http, server, "chat/completions", {**CHAT, "stream": True})
    refused = await post(http, server, "chat/completions", CHAT, {"Authorization": "Bearer nope"})
    async with http.get(f"{server.url}/nowhere") as unknown:
        await unknown.read()
    reference_upstream.fail_status = 400
    relayed = await post(http, server, "chat/completions", CHAT)
    reference_upstream.fail_status = 503
    failed = await post(http, server, "chat/completions", CHAT)
    answers = [ok, streamed, refused, unknown, relayed, failed]
    assert [a.status for a in answers] == [200, 200, 401, 404, 400, 502]
    assert streamed.content_type == "text/event-stream"
    for answer in answers:
        assert answer.headers["Server"] == name
        assert "aiohttp" not in str(answer.headers).lower()
    # A target answered these three; the gateway itself the rest.
    for answer in (ok, streamed, relayed):
        assert answer.headers.get("X-First-Target") == ("site-a100-node7" if exposed else None)
    for answer in (refused, unknown, failed):
        assert "X-First-Target" not in answer.headers
