"""first-openai-direct tested as a third party tests a plugin: installed, loaded through its
entry point (``load_entrypoints=True``), called with the real ``openai`` SDK over loopback,
in front of :class:`ReferenceUpstream` servers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from first_proxy.errors import ConfigError
from first_proxy.plugins import get_plugin_manager, list_plugins
from first_proxy.testing import (
    TEST_KEY,
    GatewayServer,
    MakeGateway,
    ReferenceUpstream,
    serve_on_loopback,
)
from first_proxy.types import Status

MODEL = "reference-model"  # what ReferenceUpstream serves


async def gateway_for(make_gateway: MakeGateway, *targets: dict[str, Any],
                      model: str = MODEL) -> GatewayServer:
    """A gateway with the installed plugins serving ``model`` on ``targets`` (backend openai)."""
    rows = [{"backend": "openai", **t} for t in targets]
    return await make_gateway({"models": {model: {"targets": rows}}}, load_entrypoints=True)


def client(server: GatewayServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class Manifests:
    """A small HTTP server publishing status manifests, as an operator's web server would."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, bytes]] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    def publish(self, name: str, data: Any, status: int = 200) -> str:
        """Serve ``data`` (bytes, or JSON-able) at ``/name``; returns its URL."""
        self.pages[f"/{name}"] = (status, data if isinstance(data, bytes) else orjson.dumps(data))
        return f"{self.url}/{name}"

    async def _serve(self, request: web.Request) -> web.Response:
        status, body = self.pages.get(request.path, (404, b"{}"))
        return web.Response(status=status, body=body, content_type="application/json")

    async def __aenter__(self) -> Manifests:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = await serve_on_loopback(self._runner)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def manifests() -> Any:
    async with Manifests() as server:
        yield server


async def status_of(server: GatewayServer, target: str, model: str = MODEL) -> Status:
    await server.gateway.refresh_statuses()
    return server.gateway.statuses[f"{model}/{target}"]


# -- installed --------------------------------------------------------------------------------


def test_plugin_is_installed() -> None:
    rows = {row["name"]: row for row in list_plugins(get_plugin_manager())}
    assert rows["first_openai_direct"]["version"] == "0.1.0"
    assert rows["first_openai_direct"]["hooks"] == ["register_backends"]


# -- dispatch ---------------------------------------------------------------------------------


async def test_the_targets_key_replaces_the_callers(make_gateway: MakeGateway) -> None:
    async with ReferenceUpstream(api_key="sk-upstream-only") as upstream:
        server = await gateway_for(make_gateway, {"name": "provider", "url": upstream.url,
                                                  "api_key": "sk-upstream-only"})
        sync = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
        answer = await asyncio.to_thread(
            sync.chat.completions.create, model=MODEL,
            messages=[{"role": "user", "content": "hello upstream"}])
        sync.close()
    assert answer.choices[0].message.content == "hello upstream"
    sent = upstream.received[-1].headers
    assert sent["Authorization"] == "Bearer sk-upstream-only"
    assert not any(TEST_KEY in value for value in sent.values())


async def test_the_callers_key_never_reaches_the_upstream(make_gateway: MakeGateway) -> None:
    # An upstream that would accept the caller's own key: the gateway must not send it.
    async with ReferenceUpstream(api_key=TEST_KEY) as upstream:
        server = await gateway_for(make_gateway, {"name": "keyless", "url": upstream.url})
        async with client(server) as api:
            with pytest.raises(openai.APIStatusError):
                await api.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert len(upstream.received) == 1
    assert "Authorization" not in upstream.received[0].headers


async def test_the_upstream_gets_its_own_model_name(make_gateway: MakeGateway) -> None:
    async with ReferenceUpstream() as upstream:
        server = await gateway_for(make_gateway, {"name": "renamed", "url": upstream.url,
                                                  "model": MODEL}, model="llama")
        async with client(server) as api:
            whole = await api.completions.create(model="llama", prompt="one two")
            stream = await api.chat.completions.create(
                model="llama", messages=[{"role": "user", "content": "three four"}], stream=True)
            chunks = [chunk async for chunk in stream]
    assert whole.choices[0].text == "one two"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "three four"
    assert all(c.usage is None for c in chunks)  # usage was asked for upstream, not shown here
    assert [r.body["model"] for r in upstream.received] == [MODEL, MODEL]
    assert upstream.received[1].body["stream_options"] == {"include_usage": True}


async def test_extra_headers_are_sent_upstream(make_gateway: MakeGateway) -> None:
    async with ReferenceUpstream() as upstream:
        server = await gateway_for(make_gateway, {
            "name": "org", "url": upstream.url, "api_key": "sk-org-key",
            "headers": {"OpenAI-Organization": "org-123", "X-Site": "polaris"}})
        async with client(server) as api:
            await api.embeddings.create(model=MODEL, input="vector please")
    sent = upstream.received[-1].headers
    assert (sent["OpenAI-Organization"], sent["X-Site"]) == ("org-123", "polaris")
    assert sent["Authorization"] == "Bearer sk-org-key"


# -- status from GET /models ------------------------------------------------------------------


async def test_status_lists_the_upstreams_models(make_gateway: MakeGateway) -> None:
    async with ReferenceUpstream(models=[MODEL, "other-model"], api_key="sk-k") as upstream:
        server = await gateway_for(make_gateway, {"name": "up", "url": upstream.url,
                                                  "api_key": "sk-k"})
        status = await status_of(server, "up")
    assert status.reachable and status.last_error is None
    assert dict(status.models) == {MODEL: "running", "other-model": "running"}


async def test_status_of_an_unreachable_target(make_gateway: MakeGateway) -> None:
    server = await gateway_for(make_gateway, {"name": "gone", "url": closed_port_url()})
    status = await status_of(server, "gone")
    assert not status.reachable
    assert status.last_error and status.last_error.startswith("ClientConnectorError")


async def test_status_when_the_upstream_refuses_the_key(make_gateway: MakeGateway) -> None:
    async with ReferenceUpstream(api_key="sk-right") as upstream:
        server = await gateway_for(make_gateway, {"name": "wrong", "url": upstream.url,
                                                  "api_key": "sk-wrong"})
        status = await status_of(server, "wrong")
    assert (status.reachable, status.last_error) == (False, "GET /models answered 401")


# -- status from a manifest -------------------------------------------------------------------


async def test_status_manifest_over_http(make_gateway: MakeGateway, manifests: Manifests) -> None:
    url = manifests.publish("llama.json", {
        "status": "online", "models": {MODEL: "running", "big-model": "queued"},
        "queue_depth": 2, "running_requests": 3, "kv_cache_usage": 0.4})
    down = manifests.publish("down.json", {"error": "moved"}, status=503)
    server = await gateway_for(
        make_gateway,
        # The URLs of the targets are never asked: the manifest speaks for them.
        {"name": "m", "url": closed_port_url(), "status_url": url},
        {"name": "broken", "url": closed_port_url(), "status_url": down})
    status = await status_of(server, "m")
    assert status.reachable and status.last_error is None
    assert dict(status.models) == {MODEL: "running", "big-model": "queued"}
    assert (status.queue_depth, status.running_requests, status.kv_cache_usage) == (2, 3, 0.4)
    broken = server.gateway.statuses[f"{MODEL}/broken"]
    assert (broken.reachable, broken.last_error) == (False, "status manifest answered 503")


async def test_status_manifest_from_a_file(make_gateway: MakeGateway, tmp_path: Path) -> None:
    online = tmp_path / "online status.json"  # a space, to be read from a quoted file:// URL
    online.write_bytes(orjson.dumps({"models": [MODEL]}))
    maintenance = tmp_path / "maintenance.json"
    maintenance.write_bytes(orjson.dumps({"status": "maintenance", "models": {}}))
    server = await gateway_for(
        make_gateway,
        {"name": "file", "url": closed_port_url(), "status_url": online.as_uri()},
        {"name": "resting", "url": closed_port_url(), "status_url": maintenance.as_uri()})
    status = await status_of(server, "file")
    assert status.reachable and dict(status.models) == {MODEL: "running"}
    resting = server.gateway.statuses[f"{MODEL}/resting"]
    assert (resting.reachable, resting.last_error) == (False, "status manifest says maintenance")


@pytest.mark.parametrize(("manifest", "why"), [
    (b"{not json", "unexpected character"),
    (b"[1, 2]", "expected a JSON object"),
    (orjson.dumps({"models": {MODEL: "warming"}}), "models must map names to one of"),
    (orjson.dumps({"queue_depth": "3"}), "queue_depth must be a number"),
    (orjson.dumps({"kv_cache_usage": True}), "kv_cache_usage must be a number"),
])
async def test_an_invalid_manifest_makes_the_target_unreachable(
        make_gateway: MakeGateway, manifests: Manifests, manifest: bytes, why: str) -> None:
    url = manifests.publish("bad.json", manifest)
    server = await gateway_for(make_gateway, {"name": "bad", "url": closed_port_url(),
                                              "status_url": url})
    status = await status_of(server, "bad")
    assert not status.reachable
    assert status.last_error and status.last_error.startswith("status manifest is not valid")
    assert why in status.last_error


async def test_selection_prefers_the_target_whose_manifest_says_running(
        make_gateway: MakeGateway, manifests: Manifests) -> None:
    async with ReferenceUpstream() as cold, ReferenceUpstream() as warm:
        async def first_choice(cold_state: str, warm_state: str) -> str:
            """Which target answers when the manifests say this (a fresh gateway each time)."""
            server = await gateway_for(
                make_gateway,
                {"name": "cold", "url": cold.url, "status_url": manifests.publish(
                    f"cold-{cold_state}.json", {"models": {MODEL: cold_state}})},
                {"name": "warm", "url": warm.url, "status_url": manifests.publish(
                    f"warm-{warm_state}.json", {"models": {MODEL: warm_state}})})
            await server.gateway.refresh_statuses()
            async with client(server) as api:
                raw = await api.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "who answers?"}])
            return raw.headers["x-first-target"]

        # cold is listed first, but its model is still starting: warm goes first.
        assert await first_choice("starting", "running") == "warm"
        assert (len(cold.received), len(warm.received)) == (0, 1)
        # warm's model stopped: the starting one is better than none.
        assert await first_choice("starting", "stopped") == "cold"
        assert (len(cold.received), len(warm.received)) == (1, 1)


# -- start-up checks --------------------------------------------------------------------------


async def test_target_problems_are_reported_at_start_up(make_gateway: MakeGateway) -> None:
    url = "https://api.example.org/v1"
    with pytest.raises(ConfigError) as caught:
        await gateway_for(
            make_gateway,
            {"name": "no-url"},
            {"name": "typo", "url": url, "header": {"X-A": "b"}},
            {"name": "auth", "url": url, "headers": {"authorization": "Bearer sk-x"}},
            {"name": "shape", "url": url, "headers": ["X-A: b"]},
            {"name": "ftp", "url": url, "status_url": "ftp://example.org/status.json"},
            {"name": "fine", "url": url, "headers": {"X-A": "b"},
             "status_url": "file:///srv/status.json"})
    problems = dict(caught.value.problems)
    base = f"models.{MODEL}.targets"
    assert sorted(problems) == [f"{base}[0].url", f"{base}[1].header", f"{base}[2].headers",
                                f"{base}[3].headers", f"{base}[4].status_url"]
    assert "required for backend openai" in problems[f"{base}[0].url"]
    assert "unknown key for backend openai" in problems[f"{base}[1].header"]
    assert "api_key" in problems[f"{base}[2].headers"]
    assert "http(s)://" in problems[f"{base}[4].status_url"]
