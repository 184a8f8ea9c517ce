"""Who may call and what they see: API keys, groups, and credentials that never leak."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from first_proxy import AuthenticationError, Call, Gateway, Status, Target, UpstreamResponse, hookimpl
from first_proxy.testing import (
    TEST_KEY,
    GatewayServer,
    MakeGateway,
    ReferenceBackend,
    ReferenceUpstream,
    api_keys,
)

MODEL = "reference-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
ADMIN_KEY = "sk-admin-0123456789"
UPSTREAM_KEY = "sk-upstream-target-secret"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def reference_target(upstream: ReferenceUpstream, name: str = "a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "reference", "url": upstream.url, **extra}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(http: aiohttp.ClientSession, server: GatewayServer, key: str,
               body: dict[str, Any] = CHAT, **headers: str) -> int:
    async with http.post(f"{server.base_url}/chat/completions", json=body,
                         headers={**bearer(key), **headers}) as response:
        await response.read()
        return response.status


# -- API keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("upper", [False, True])
async def test_a_key_given_by_its_sha256(http: aiohttp.ClientSession, make_gateway: MakeGateway,
                                        reference_upstream: ReferenceUpstream, upper: bool) -> None:
    key = "sk-hashed-key-0001"
    digest = hashlib.sha256(key.encode()).hexdigest()
    server = await make_gateway({
        "auth": {"api_keys": [{"name": "hashed", "sha256": digest.upper() if upper else digest}]},
        "models": {MODEL: {"targets": [reference_target(reference_upstream)]}},
    }, plugins=[ReferenceBackend()])
    assert await chat(http, server, key) == 200
    assert await chat(http, server, digest) == 401
    assert await chat(http, server, TEST_KEY) == 401


async def test_a_key_read_from_the_environment(http: aiohttp.ClientSession,
                                              make_gateway: MakeGateway,
                                              reference_upstream: ReferenceUpstream,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRST_PROXY_TEST_SITE_KEY", "sk-from-the-environment")
    server = await make_gateway({
        "auth": {"api_keys": [{"name": "site", "key": "${FIRST_PROXY_TEST_SITE_KEY}"}]},
        "models": {MODEL: {"targets": [reference_target(reference_upstream)]}},
    }, plugins=[ReferenceBackend()])
    assert await chat(http, server, "sk-from-the-environment") == 200
    assert await chat(http, server, "${FIRST_PROXY_TEST_SITE_KEY}") == 401


async def test_a_key_from_an_explicit_environment(http: aiohttp.ClientSession, tmp_path: Path,
                                                 reference_upstream: ReferenceUpstream) -> None:
    config = {
        "store": f"sqlite:///{tmp_path}/g.db",
        "auth": {"api_keys": [{"name": "site", "key": "${SITE_KEY}", "groups": ["staff"]}]},
        "models": {MODEL: {"allowed_groups": ["staff"],
                           "targets": [reference_target(reference_upstream)]}},
    }
    async with GatewayServer(config, plugins=[ReferenceBackend()],
                             environ={"SITE_KEY": "sk-explicit-environ"}) as server:
        assert await chat(http, server, "sk-explicit-environ") == 200
        assert await chat(http, server, TEST_KEY) == 401


class ExpiringTokens:
    """An auth plugin owning ``tok-`` tokens: ``tok-ok`` is alice, every other one is expired."""

    @hookimpl
    def authenticate(self, request: web.Request) -> Any:
        from first_proxy import Identity

        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token.startswith("tok-"):
            return None
        if token == "tok-ok":
            return Identity(user_id="alice", groups=frozenset({"staff"}))
        raise AuthenticationError("Your token has expired; log in again.", code="token_expired")


async def test_a_plugin_rejecting_its_own_credential_is_401(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [reference_target(reference_upstream)]}}},
                                plugins=[ReferenceBackend(), ExpiringTokens()])
    async with http.post(f"{server.base_url}/chat/completions", json=CHAT,
                         headers=bearer("tok-old")) as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert error == {"message": "Your token has expired; log in again.",
                     "type": "authentication_error", "param": None, "code": "token_expired"}
    assert await chat(http, server, "tok-ok") == 200
    assert await chat(http, server, TEST_KEY) == 200


# -- the caller's credential stays at the gateway ---------------------------------------------


@pytest.mark.parametrize("target_key", [UPSTREAM_KEY, None])
async def test_the_upstream_sees_the_targets_key_never_the_callers(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream, target_key: str | None) -> None:
    reference_upstream.api_key = target_key
    target = reference_target(reference_upstream)
    if target_key is not None:
        target["api_key"] = target_key
    server = await make_gateway({"models": {MODEL: {"targets": [target]}}},
                                plugins=[ReferenceBackend()])
    calls = [("chat/completions", CHAT), ("chat/completions", {**CHAT, "stream": True}),
             ("completions", {"model": MODEL, "prompt": "hi", "stream": True}),
             ("embeddings", {"model": MODEL, "input": "hi"})]
    for endpoint, body in calls:
        async with http.post(f"{server.base_url}/{endpoint}", json=body, headers={
                **bearer(TEST_KEY), "Cookie": f"session={TEST_KEY}", "X-Api-Key": TEST_KEY,
                "Proxy-Authorization": f"Basic {TEST_KEY}"}) as response:
            assert response.status == 200, await response.text()
            await response.read()
    assert len(reference_upstream.received) == len(calls)
    for received in reference_upstream.received:
        headers = {k.lower(): v for k, v in received.headers.items()}
        assert not any(TEST_KEY in value for value in headers.values())
        assert {"cookie", "x-api-key", "proxy-authorization"}.isdisjoint(headers)
        if target_key is None:
            assert "authorization" not in headers
        else:
            assert headers["authorization"] == f"Bearer {target_key}"


class ExplodingDispatch(ReferenceBackend):
    """Backend ``reference``, whose dispatch breaks on a body with ``explode``."""

    def __init__(self) -> None:
        super().__init__()
        answer = self.backend.dispatch

        async def dispatch(target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
            if call.body.get("explode"):
                raise RuntimeError("dispatch broke")
            return await answer(target, call, gateway)

        self.backend.dispatch = dispatch  # type: ignore[method-assign]


async def test_credentials_never_reach_the_log_or_the_request_log(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reference_upstream.api_key = UPSTREAM_KEY
    wrong_key = TEST_KEY + "-wrong"
    server = await make_gateway({
        "limits": {"requests_per_minute": 1000},
        "request_log": {"include_prompts": True},
        "auth": api_keys({"name": "admin", "key": ADMIN_KEY, "groups": ["admins"],
                          "requests_per_minute": 1}),
        "models": {
            MODEL: {"targets": [reference_target(reference_upstream, api_key=UPSTREAM_KEY)]},
            "private": {"allowed_groups": ["admins"],
                        "targets": [reference_target(reference_upstream)]},
            "wrong-key": {"targets": [reference_target(reference_upstream, api_key="sk-stale-key")]},
        },
    }, plugins=[ExplodingDispatch()])
    outcomes = [
        await chat(http, server, TEST_KEY),
        await chat(http, server, TEST_KEY, {**CHAT, "stream": True}),
        await chat(http, server, wrong_key),
        await chat(http, server, f"{TEST_KEY} extra"),
        await chat(http, server, TEST_KEY, {**CHAT, "model": "private"}),
        await chat(http, server, TEST_KEY, {**CHAT, "model": "absent"}),
        await chat(http, server, TEST_KEY, {**CHAT, "model": "wrong-key"}),
        await chat(http, server, TEST_KEY, {"model": MODEL}),
        await chat(http, server, TEST_KEY, {**CHAT, "explode": True}),
        await chat(http, server, ADMIN_KEY),
        await chat(http, server, ADMIN_KEY),
    ]
    reference_upstream.fail_status = 500
    outcomes.append(await chat(http, server, TEST_KEY))
    # A target refusing the gateway's own key is its failure, not the caller's: 502.
    assert outcomes == [200, 200, 401, 401, 403, 404, 502, 400, 500, 200, 429, 502]
    async with http.get(f"{server.url}/metrics") as response:
        metrics = await response.text()

    assert server.gateway.request_log is not None and server.gateway.store is not None
    await server.gateway.request_log.flush()
    rows = await server.gateway.store.recent_requests(100)
    assert len(rows) == len(outcomes)
    assert any(row["prompt"] for row in rows)
    assert "dispatch broke" in caplog.text  # the log did capture the gateway's messages
    stored = orjson.dumps(rows).decode()
    for secret in (TEST_KEY, ADMIN_KEY, UPSTREAM_KEY, "sk-stale-key"):
        assert secret not in caplog.text
        assert not any(secret in str(record.args) for record in caplog.records)
        assert secret not in stored
        assert secret not in metrics


# -- what a caller may see ------------------------------------------------------------------


@pytest.fixture
async def groups_gateway(make_gateway: MakeGateway,
                         reference_upstream: ReferenceUpstream) -> GatewayServer:
    """Models open to all, to staff, to admins, and models whose targets are restricted."""
    url = reference_upstream.url
    open_target = {"name": "open", "backend": "reference", "url": url, "api_key": UPSTREAM_KEY}
    admin_target = {"name": "admin-only", "backend": "reference", "url": url,
                    "allowed_groups": ["admins"], "api_key": UPSTREAM_KEY}
    return await make_gateway({
        "auth": api_keys({"name": "admin", "key": ADMIN_KEY, "groups": ["admins"]}),
        "models": {
            "open-model": {"targets": [open_target]},
            "staff-model": {"allowed_groups": ["staff"], "targets": [open_target]},
            "admin-model": {"allowed_groups": ["admins"], "targets": [open_target]},
            "admin-targets": {"targets": [admin_target]},
            "mixed": {"targets": [admin_target, open_target]},
        },
    }, plugins=[ReferenceBackend()])


VISIBLE = {TEST_KEY: ["open-model", "staff-model", "mixed"],
           ADMIN_KEY: ["open-model", "admin-model", "admin-targets", "mixed"]}


@pytest.mark.parametrize("key", [TEST_KEY, ADMIN_KEY])
async def test_models_lists_only_what_the_caller_may_use(http: aiohttp.ClientSession,
                                                         groups_gateway: GatewayServer,
                                                         key: str) -> None:
    for prefix in ("/v1", "/resource_server/v1"):
        async with http.get(f"{groups_gateway.url}{prefix}/models", headers=bearer(key)) as response:
            assert response.status == 200
            listing = await response.json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == VISIBLE[key]
    for name in ["open-model", "staff-model", "admin-model", "admin-targets", "mixed"]:
        async with http.get(f"{groups_gateway.base_url}/models/{name}",
                            headers=bearer(key)) as response:
            assert response.status == (200 if name in VISIBLE[key] else 404)
            if response.status == 200:
                assert (await response.json())["id"] == name


@pytest.mark.parametrize("path", ["/v1/models", "/status", "/resource_server/status"])
@pytest.mark.parametrize("headers", [{}, bearer("sk-nobody-0000"), {"Authorization": "Basic x"}])
async def test_listings_and_status_need_a_credential(http: aiohttp.ClientSession,
                                                     groups_gateway: GatewayServer,
                                                     path: str, headers: dict[str, str]) -> None:
    async with http.get(groups_gateway.url + path, headers=headers) as response:
        assert response.status == 401
        body = await response.json()
    assert body["error"]["type"] == "authentication_error"
    assert "models" not in body


class ReportsStatus:
    """Checks each target over HTTP; two checks fail with the URL or the key in their error."""

    async def __call__(self, target: Target, gateway: Gateway) -> Status:
        if target.key == "open-model/open":
            raise ConnectionError(f"{target.url} refused key {target.api_key}")
        path = "/missing" if target.key == "mixed/open" else "/models"
        async with gateway.session(target).get(f"{target.url}{path}", headers={
                "Authorization": f"Bearer {target.api_key}"}) as response:
            response.raise_for_status()
        return Status(reachable=True, models={target.upstream_model: "running"})


@pytest.mark.parametrize("key", [TEST_KEY, ADMIN_KEY])
async def test_status_hides_what_the_caller_may_not_use_and_every_url_and_key(
        http: aiohttp.ClientSession, make_gateway: MakeGateway,
        reference_upstream: ReferenceUpstream, key: str) -> None:
    url = reference_upstream.url
    open_target = {"name": "open", "backend": "reference", "url": url, "api_key": UPSTREAM_KEY}
    admin_target = {"name": "admin-only", "backend": "reference", "url": url,
                    "allowed_groups": ["admins"], "api_key": UPSTREAM_KEY}
    server = await make_gateway({
        "auth": api_keys({"name": "admin", "key": ADMIN_KEY, "groups": ["admins"]}),
        "models": {
            "open-model": {"targets": [open_target]},
            "admin-model": {"allowed_groups": ["admins"], "targets": [open_target]},
            "mixed": {"targets": [admin_target, open_target]},
        },
    }, plugins=[ReferenceBackend(status=ReportsStatus())])
    await server.gateway.refresh_statuses()
    async with http.get(f"{server.url}/status", headers=bearer(key)) as response:
        assert response.status == 200
        text = await response.text()
    shown = {m["model"]: [t["name"] for t in m["targets"]] for m in orjson.loads(text)["models"]}
    if key == TEST_KEY:
        assert shown == {"open-model": ["open"], "mixed": ["open"]}
    else:
        assert shown == {"open-model": ["open"], "admin-model": ["open"],
                         "mixed": ["admin-only", "open"]}
    statuses = {(m["model"], t["name"]): t["status"]
                for m in orjson.loads(text)["models"] for t in m["targets"]}
    assert statuses["open-model", "open"]["reachable"] is False
    assert statuses["mixed", "open"]["reachable"] is False
    assert "404" in statuses["mixed", "open"]["last_error"]
    if key == ADMIN_KEY:
        assert statuses["admin-model", "open"]["reachable"] is True
    host = url.split("//", 1)[1].split("/", 1)[0]
    for secret in (url, host, UPSTREAM_KEY, TEST_KEY, ADMIN_KEY):
        assert secret not in text
    assert '"url"' not in text and '"api_key"' not in text
