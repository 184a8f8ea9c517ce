"""The plugin manager, and every hook exercised through a real gateway (``test_hook_<name>``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import click
import openai
import orjson
import pluggy
import pytest
from aiohttp import web
from click.testing import CliRunner

from first_proxy import (
    AuthenticationError,
    Call,
    Denial,
    Gateway,
    GatewayConfig,
    Identity,
    Status,
    Target,
    UpstreamError,
    UpstreamResponse,
    __version__,
    hookimpl,
)
from first_proxy.cli import cli
from first_proxy.config import parse_config
from first_proxy.errors import ConfigError, StartupError
from first_proxy.gateway import check_wiring
from first_proxy.hookspecs import HOOK_NAMES
from first_proxy.plugins import BUILTIN_PLUGINS, get_plugin_manager, list_plugins
from first_proxy.store import open_store
from first_proxy.testing import TEST_KEY, ReferenceBackend, ReferenceUpstream, api_keys

REPO = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
HI = [{"role": "user", "content": "hi there"}]


def targets(upstream: ReferenceUpstream, *names: str) -> dict[str, Any]:
    return {"targets": [{"name": name, "backend": "reference", "url": upstream.url,
                         "model": "reference-model"} for name in names]}


async def post(server: Any, model: str, headers: Mapping[str, str] = AUTH,
               **body: Any) -> tuple[int, Mapping[str, str], dict[str, Any]]:
    """POST a chat completion; the status, headers and JSON body of the answer."""
    async with aiohttp.ClientSession() as session, session.post(
        f"{server.base_url}/chat/completions", headers=headers,
        json={"model": model, "messages": HI, **body},
    ) as response:
        return response.status, response.headers, await response.json()


async def logged_rows(server: Any) -> list[dict[str, Any]]:
    """The gateway's request-log rows, oldest first, after writing what is buffered."""
    assert await server.gateway.request_log.flush()
    return list(reversed(await server.gateway.store.recent_requests()))


# -- the plugin manager -----------------------------------------------------------------


def test_builtins_are_registered_and_trylast_but_the_api_key_check() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    for module in BUILTIN_PLUGINS:
        plugin = pm.get_plugin(module)
        assert plugin is not None, module
        impls = {(caller.name, impl) for caller in pm.get_hookcallers(plugin) or ()
                 for impl in caller.get_hookimpls() if impl.plugin is plugin}
        assert impls, module
        for name, impl in impls:
            first = (module, name) == ("first_proxy.builtin.api_keys", "authenticate")
            assert (impl.tryfirst, impl.trylast) == (first, not first), (module, name)


def test_installed_plugins_load_from_entry_points() -> None:
    assert get_plugin_manager().get_plugin("first_openai_direct") is not None
    assert get_plugin_manager(load_entrypoints=False).get_plugin("first_openai_direct") is None


def test_blocked_removes_a_builtin_by_module_name() -> None:
    pm = get_plugin_manager(load_entrypoints=False, blocked=["first_proxy.builtin.api_keys"])
    assert pm.get_plugin("first_proxy.builtin.api_keys") is None
    assert pm.is_blocked("first_proxy.builtin.api_keys")
    assert pm.get_plugin("first_proxy.builtin.groups") is not None


async def test_a_builtin_disabled_in_gateway_yaml_is_not_asked(
    make_gateway: Any, reference_upstream: ReferenceUpstream
) -> None:
    server = await make_gateway(
        {"plugins": {"first_proxy.builtin.api_keys": {"enabled": False}},
         "models": {"m": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend()])
    status, _, body = await post(server, "m")
    assert status == 401
    assert body["error"]["type"] == "authentication_error"


def test_list_plugins_hides_builtins_unless_asked() -> None:
    pm = get_plugin_manager(load_entrypoints=False, plugins=[ReferenceBackend()])
    assert list_plugins(pm) == [{"name": "reference_backend", "version": None, "builtin": False,
                                 "hooks": ["dispatch", "register_backends"]}]
    rows = list_plugins(pm, include_builtin=True)
    assert [r["name"] for r in rows] == ["reference_backend", *sorted(BUILTIN_PLUGINS)]
    assert all(r["builtin"] and r["version"] == __version__ for r in rows[1:])
    assert next(r for r in rows if r["name"] == "first_proxy.builtin.api_keys")["hooks"] == [
        "authenticate", "startup"]


class Misspelled:
    @hookimpl
    def authentcate(self, request: web.Request) -> None:
        return None


class WrongArgument:
    @hookimpl
    def authorize(self, identity: Identity, modle: str) -> None:
        return None


def test_a_misspelled_hook_is_refused() -> None:
    with pytest.raises(pluggy.PluginValidationError, match="authentcate"):
        get_plugin_manager(load_entrypoints=False, plugins=[Misspelled()])


def test_an_argument_the_hook_does_not_have_is_refused() -> None:
    with pytest.raises(pluggy.PluginValidationError, match="modle"):
        get_plugin_manager(load_entrypoints=False, plugins=[WrongArgument()])


class AsyncLimit:
    @hookimpl
    async def check_limits(self, model: str) -> Denial | None:
        await asyncio.sleep(0)
        return Denial("async says no", status=429, code="async_no") if model == "x" else None


class PlainLimit:
    @hookimpl
    def check_limits(self, model: str) -> Denial | None:
        return Denial("plain says no", status=429, code="plain_no") if model == "y" else None


async def test_hooks_may_return_awaitables_or_plain_values(
    make_gateway: Any, reference_upstream: ReferenceUpstream
) -> None:
    models = {name: targets(reference_upstream, "a") for name in ("x", "y", "z")}
    server = await make_gateway({"models": models},
                                plugins=[ReferenceBackend(), AsyncLimit(), PlainLimit()])
    answers = {name: await post(server, name) for name in models}
    assert answers["x"][0] == 429 and answers["x"][2]["error"]["code"] == "async_no"
    assert answers["y"][0] == 429 and answers["y"][2]["error"]["code"] == "plain_no"
    assert answers["z"][0] == 200


def test_every_hook_has_a_test() -> None:
    files = [*(REPO / "tests").rglob("*.py"), *REPO.glob("plugins/*/tests/**/*.py")]
    text = "\n".join(path.read_text() for path in files)
    missing = [name for name in HOOK_NAMES
               if not re.search(rf"def test_hook_{name}\b", text)]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


# -- one test per hook ------------------------------------------------------------------


class Echo:
    """Backend ``echo``: answers every call itself with the target's ``reply`` option."""

    __name__ = "echo_backend"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Call]] = []

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register("echo", validate=self.validate)

    @staticmethod
    def validate(target: Target, path: str) -> list[tuple[str, str]]:
        if not isinstance(target.options.get("reply"), str):
            return [(f"{path}.reply", "expected the text to answer with")]
        return []

    @hookimpl
    async def dispatch(self, target: Target, call: Call) -> UpstreamResponse | None:
        if target.backend != "echo":
            return None
        self.calls.append((target.name, call))
        if target.options.get("broken"):
            raise UpstreamError(f"{target.name} is broken")
        reply = target.options["reply"]
        if call.stream:
            return UpstreamResponse(status=200, chunks=_sse(call.model, reply),
                                    headers={"Content-Type": "text/event-stream"})
        body = {"id": "echo-1", "object": "chat.completion", "created": 0, "model": call.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}
        return UpstreamResponse(status=200, body=orjson.dumps(body),
                                headers={"Content-Type": "application/json"})


async def _sse(model: str, reply: str) -> AsyncIterator[bytes]:
    for i, word in enumerate(reply.split()):
        chunk = {"id": "echo-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                 "choices": [{"index": 0, "finish_reason": None,
                              "delta": {"content": word if i == 0 else " " + word}}]}
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: [DONE]\n\n"


async def test_hook_register_backends(make_gateway: Any) -> None:
    with pytest.raises(ConfigError) as missing:
        await make_gateway({"models": {"m": {"targets": [{"name": "e", "backend": "echo"}]}}},
                           plugins=[Echo()])
    assert missing.value.problems == [("models.m.targets[0].reply",
                                       "expected the text to answer with")]
    with pytest.raises(ConfigError) as unknown:
        await make_gateway({"models": {"m": {"targets": [{"name": "e", "backend": "echo"}]}}})
    assert unknown.value.problems[0][0] == "models.m.targets[0].backend"

    server = await make_gateway(
        {"models": {"m": {"targets": [{"name": "e", "backend": "echo", "reply": "hello"}]}}},
        plugins=[Echo()])
    status, _, body = await post(server, "m")
    assert (status, body["choices"][0]["message"]["content"]) == (200, "hello")


async def test_hook_dispatch(make_gateway: Any) -> None:
    echo = Echo()
    server = await make_gateway({"models": {"m": {"targets": [
        {"name": "down", "backend": "echo", "reply": "-", "broken": True},
        {"name": "up", "backend": "echo", "reply": "answered by a plugin"},
    ]}}}, plugins=[echo])
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    raw = await asyncio.to_thread(
        client.chat.completions.with_raw_response.create, model="m", messages=HI)
    assert raw.headers["X-First-Target"] == "up"
    assert raw.parse().choices[0].message.content == "answered by a plugin"

    def streamed() -> str:
        stream = client.chat.completions.create(model="m", messages=HI, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream)

    assert await asyncio.to_thread(streamed) == "answered by a plugin"
    assert [name for name, _ in echo.calls] == ["down", "up", "down", "up"]
    assert echo.calls[0][1].identity.user_id == "key:tester"
    assert [c.stream for _, c in echo.calls] == [False, False, True, True]
    rows = await logged_rows(server)
    assert [(r["target"], r["attempts"], r["completion_tokens"]) for r in rows] == [
        ("up", 2, 2), ("up", 2, None)]


class Settings:
    """Plugin ``settings``: needs ``plugins.settings.region``, one of the ``clusters``."""

    __name__ = "settings"

    def __init__(self) -> None:
        self.started = False

    @hookimpl
    def check_config(self, config: GatewayConfig) -> list[tuple[str, str]] | None:
        region = config.plugins.get("settings", {}).get("region")
        if region is None:
            return [("plugins.settings.region", "required: one of the clusters")]
        if region not in config.clusters:
            return [("plugins.settings.region", f"no cluster named {region!r}")]
        return None

    @hookimpl
    def startup(self) -> None:
        self.started = True


class Quiet:
    """Has nothing to say about any configuration."""

    @hookimpl
    def check_config(self) -> list[tuple[str, str]]:
        return []


async def test_hook_check_config(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    models = {"m": targets(reference_upstream, "a")}
    settings = Settings()
    # At start-up, before any startup hook, together with the core's own problems.
    with pytest.raises(ConfigError) as caught:
        await make_gateway({"plugins": {"settings": {"region": "mars"}},
                            "models": {**models, "n": {"targets": [{"backend": "nobody"}]}}},
                           plugins=[ReferenceBackend(), settings, Quiet()])
    assert caught.value.problems == [
        ("plugins.settings.region", "no cluster named 'mars'"),
        ("models.n.targets[0].backend",
         "no installed plugin dispatches backend 'nobody' (installed backends: reference)")]
    assert not settings.started
    server = await make_gateway({"plugins": {"settings": {"region": "polaris"}},
                                 "clusters": {"polaris": {}}, "models": models},
                                plugins=[ReferenceBackend(), settings, Quiet()])
    assert settings.started and (await post(server, "m"))[0] == 200

    # check_wiring, as `first-proxy check` runs it: every plugin asked, nothing started.
    pm = get_plugin_manager(load_entrypoints=False, plugins=[Settings(), Quiet()])
    assert check_wiring(parse_config({}), pm) == [
        ("plugins.settings.region", "required: one of the clusters")]
    assert check_wiring(parse_config({"plugins": {"settings": {"region": "a"}},
                                      "clusters": {"a": {}}}), pm) == []
    # A plugin whose section is disabled is not asked, even when registered.
    assert check_wiring(parse_config({"plugins": {"settings": {"enabled": False}}}), pm) == []


class AsyncSettings:
    __name__ = "async_settings"

    @hookimpl
    async def check_config(self) -> list[tuple[str, str]]:
        return [("plugins.async_settings", "never seen")]


def test_an_async_check_config_is_refused() -> None:
    pm = get_plugin_manager(load_entrypoints=False, plugins=[AsyncSettings()])
    with pytest.raises(TypeError, match=r"check_config must be synchronous.*async_settings"):
        check_wiring(parse_config({}), pm)


class Lifecycle:
    __name__ = "lifecycle"

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        await asyncio.sleep(0)
        gateway.state["lifecycle"] = dict(gateway.plugin_config("lifecycle"))
        self.events.append(("startup", gateway.store is not None))

    @hookimpl
    def shutdown(self, gateway: Gateway) -> None:
        self.events.append(("shutdown", gateway.store is not None))


async def test_hook_startup(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    lifecycle = Lifecycle()
    server = await make_gateway(
        {"plugins": {"lifecycle": {"greeting": "hello"}},
         "models": {"m": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend(), lifecycle])
    # Called once, before the first request, with the store already open.
    assert lifecycle.events == [("startup", True)]
    assert server.gateway.state["lifecycle"] == {"greeting": "hello"}
    assert (await post(server, "m"))[0] == 200
    assert lifecycle.events == [("startup", True)]


class Refuses:
    """Refuses to start: with its own ConfigError when ``plugins.refuses.key`` is set."""

    __name__ = "refuses"

    @hookimpl
    def startup(self, gateway: Gateway) -> None:
        if "key" in gateway.plugin_config("refuses"):
            raise ConfigError(gateway.config.source, [("plugins.refuses.key", "revoked")])
        raise ConnectionRefusedError("the licence server refused\nsecond line")


async def test_a_plugin_that_cannot_start_is_named(make_gateway: Any) -> None:
    with pytest.raises(StartupError) as caught:
        await make_gateway({}, plugins=[Refuses()])
    assert str(caught.value) == ("plugin refuses could not start: "
                                 "ConnectionRefusedError: the licence server refused")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    with pytest.raises(ConfigError) as config:
        await make_gateway({"plugins": {"refuses": {"key": "k"}}}, plugins=[Refuses()])
    assert config.value.problems == [("plugins.refuses.key", "revoked")]


async def test_hook_shutdown(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    lifecycle = Lifecycle()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), lifecycle])
    assert (await post(server, "m"))[0] == 200
    await server.close()
    # Called once, with the store still open; the request log is written after it.
    assert lifecycle.events == [("startup", True), ("shutdown", True)]
    store = await open_store(server.config.store)
    try:
        assert [r["status"] for r in await store.recent_requests()] == [200]
    finally:
        await store.close()


class HeaderAuth:
    """Identifies ``X-User``; owns the token ``revoked-token`` and rejects it."""

    @hookimpl
    def authenticate(self, request: web.Request) -> Identity | None:
        if request.headers.get("Authorization") == "Bearer revoked-token":
            raise AuthenticationError("that token was revoked", code="token_revoked")
        user = request.headers.get("X-User")
        return Identity(user_id=f"hdr:{user}", username=user) if user else None


async def test_hook_authenticate(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway(
        {"auth": api_keys({"name": "bob", "key": "sk-bob-123456789"}),
         "models": {"m": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend(), HeaderAuth()])
    # The built-in API keys are asked first: a configured key is answered there, even when
    # the plugin would know the caller too ...
    assert (await post(server, "m", headers={**AUTH, "X-User": "ada"}))[0] == 200
    assert (await post(server, "m", headers={"Authorization": "Bearer sk-bob-123456789",
                                             "X-User": "ada"}))[0] == 200
    # ... and what is not a key is left to the plugins.
    assert (await post(server, "m", headers={"X-User": "ada"}))[0] == 200
    status, _, body = await post(server, "m", headers={"Authorization": "Bearer revoked-token"})
    assert (status, body["error"]["code"]) == (401, "token_revoked")
    assert body["error"]["message"] == "that token was revoked"
    status, _, body = await post(server, "m", headers={"Authorization": "Bearer nobody-knows"})
    assert status == 401
    assert [r["user"] for r in await logged_rows(server)] == [
        "key:tester", "key:bob", "hdr:ada", None, None]


class Gatekeeper:
    @hookimpl
    def authorize(self, identity: Identity, model: str, target: Target | None) -> Denial | None:
        if target is None and model == "secret":
            return Denial(f"{identity.name} may not use secret")
        if target is not None and target.name == "a":
            return Denial("target a is reserved", code="reserved")
        return None


async def test_hook_authorize(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway(
        {"models": {"m": targets(reference_upstream, "a", "b"),
                    "secret": targets(reference_upstream, "b"),
                    "only-a": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend(), Gatekeeper()])
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "b")
    status, _, body = await post(server, "secret")
    assert (status, body["error"]["message"]) == (403, "tester may not use secret")
    status, _, body = await post(server, "only-a")
    assert (status, body["error"]["code"]) == (403, "reserved")
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    listed = await asyncio.to_thread(client.models.list)
    assert sorted(m.id for m in listed.data) == ["m"]


class Quota:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    @hookimpl
    def check_limits(self, identity: Identity, model: str, gateway: Gateway) -> Denial | None:
        self.asked.append((identity.user_id, model))
        if len(self.asked) > 1:
            return Denial("quota used up", status=429, code="quota_exceeded", retry_after=7)
        return None


async def test_hook_check_limits(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    quota = Quota()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), quota])
    assert (await post(server, "m"))[0] == 200
    status, headers, body = await post(server, "m")
    assert (status, headers["Retry-After"], body["error"]["code"]) == (429, "7", "quota_exceeded")
    assert len(reference_upstream.received) == 1
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    await asyncio.to_thread(client.models.list)  # listings are not limited
    assert quota.asked == [("key:tester", "m"), ("key:tester", "m")]


class Chooser:
    def __init__(self) -> None:
        self.mode = "reverse"
        self.seen: list[tuple[str, list[str], dict[str, Status]]] = []

    @hookimpl
    def select_target(self, model: str, candidates: Sequence[Target],
                      statuses: Mapping[str, Status]) -> list[Target] | None:
        self.seen.append((model, [t.name for t in candidates], dict(statuses)))
        if self.mode == "reverse":
            return list(reversed(candidates))
        if self.mode == "none":
            return None
        return []


async def test_hook_select_target(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    chooser = Chooser()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a", "b")}},
                                plugins=[ReferenceBackend(), chooser])
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "b")
    chooser.mode = "none"  # the built-in selection decides: gateway.yaml's order
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "a")
    chooser.mode = "empty"  # every target ruled out
    status, _, body = await post(server, "m")
    assert status == 503
    assert body["error"]["message"].startswith("No target for 'm' is available")
    assert [(model, names) for model, names, _ in chooser.seen] == [("m", ["a", "b"])] * 3


class Health:
    @hookimpl
    async def report_status(self, target: Target) -> Status | None:
        if target.name == "down":
            raise ConnectionError("cluster unreachable")
        return Status(reachable=True, queue_depth=3, models={"reference-model": "running"})


async def test_hook_report_status(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway({"models": {"m": targets(reference_upstream, "down", "up")}},
                                plugins=[ReferenceBackend(), Health()])
    await server.gateway.refresh_statuses()
    statuses = server.gateway.statuses
    assert statuses["m/up"].reachable and statuses["m/up"].queue_depth == 3
    assert statuses["m/up"].checked_at > 0
    assert not statuses["m/down"].reachable
    assert statuses["m/down"].last_error == "ConnectionError: cluster unreachable"
    # The cached statuses steer the choice: the unreachable target, listed first, is last.
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "up")
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.url}/status", headers=AUTH) as response:
        shown = await response.json()
    by_name = {t["name"]: t["status"] for t in shown["models"][0]["targets"]}
    assert by_name["up"]["queue_depth"] == 3
    assert by_name["down"]["last_error"] == "ConnectionError: cluster unreachable"


class Greeter:
    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command()
        @click.argument("name")
        def greet(name: str) -> None:
            """Say hello."""
            click.echo(f"hello {name}")


def test_hook_register_commands() -> None:
    group = click.Group("first-proxy", commands=dict(cli.commands))
    pm = get_plugin_manager(load_entrypoints=False, plugins=[Greeter()])
    pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["greet", "ada"])
    assert (result.exit_code, result.output) == (0, "hello ada\n")
    assert "greet" in CliRunner().invoke(group, ["--help"]).output
    assert "greet" not in cli.commands
