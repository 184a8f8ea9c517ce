"""The plugin manager, and every hook exercised through a real gateway (``test_hook_<name>``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
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
    ANTHROPIC,
    IDENTITY,
    AuthenticationError,
    Backend,
    Call,
    Denial,
    Gateway,
    GatewayConfig,
    Identity,
    RequestRecord,
    Status,
    Target,
    UpstreamResponse,
    __version__,
    hookimpl,
    pipeline,
)
from first_proxy.builtin import selection
from first_proxy.cli import cli
from first_proxy.config import parse_config
from first_proxy.errors import BadRequest, ConfigError, NoTargetAvailable, PluginError, StartupError
from first_proxy.gateway import check_wiring
from first_proxy.hookspecs import HOOK_NAMES
from first_proxy.plugins import BUILTIN_PLUGINS, get_plugin_manager, list_plugins
from first_proxy.store import RequestQuery, open_store
from first_proxy.testing import TEST_KEY, ReferenceBackend, ReferenceUpstream, api_keys, eventually

REPO = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
HI = [{"role": "user", "content": "hi there"}]
#: A prompt long enough that its stream is still running when a test acts on it.
LONG = " ".join(f"w{i}" for i in range(200))


def targets(upstream: ReferenceUpstream, *names: str, **keys: Any) -> dict[str, Any]:
    return {"targets": [{"name": name, "backend": "reference", "url": upstream.url,
                         "model": "reference-model", **keys} for name in names]}


async def post(server: Any, model: str, headers: Mapping[str, str] = AUTH, path: str = "/v1",
               **body: Any) -> tuple[int, Mapping[str, str], dict[str, Any]]:
    """POST a chat completion; the status, headers and JSON body of the answer."""
    async with aiohttp.ClientSession() as session, session.post(
        f"{server.url}{path}/chat/completions", headers=headers,
        json={"model": model, "messages": HI, **body},
    ) as response:
        return response.status, response.headers, await response.json()


async def request(server: Any, method: str, path: str, headers: Mapping[str, str] | None = None,
                  **kwargs: Any) -> tuple[int, Mapping[str, str], Any]:
    """Any request to the gateway; the status, headers and JSON body of the answer."""
    async with aiohttp.ClientSession() as session, session.request(
            method, f"{server.url}{path}", headers=headers or {}, **kwargs) as response:
        return response.status, response.headers, await response.json(content_type=None)


async def metrics(server: Any) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/metrics") as response:
        return await response.text()


async def logged_rows(server: Any) -> list[dict[str, Any]]:
    """The gateway's request-log rows, oldest first, after writing what is buffered."""
    return list(reversed(await server.logged()))


# -- the plugin manager -----------------------------------------------------------------

#: The built-in hooks that must come before installed plugins' (see first_proxy.hookspecs).
TRYFIRST = {("first_proxy.builtin.api_keys", "authenticate"),
            ("first_proxy.builtin.selection", "select_target")}


def test_builtins_are_registered_trylast_but_the_two_that_come_first() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    for module in BUILTIN_PLUGINS:
        plugin = pm.get_plugin(module)
        assert plugin is not None, module
        impls = [(caller.name, impl) for caller in pm.get_hookcallers(plugin) or ()
                 for impl in caller.get_hookimpls() if impl.plugin is plugin]
        assert impls, module
        for hook, impl in impls:
            first = (module, hook) in TRYFIRST
            assert (impl.tryfirst, impl.trylast) == (first, not first), (module, hook)


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
                                 "hooks": ["register_backends"]}]
    rows = list_plugins(pm, include_builtin=True)
    assert [r["name"] for r in rows] == ["reference_backend", *sorted(BUILTIN_PLUGINS)]
    assert all(r["builtin"] and r["version"] == __version__ for r in rows[1:])
    assert next(r for r in rows if r["name"] == "first_proxy.builtin.api_keys")["hooks"] == [
        "authenticate"]


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


class NewWrapper:
    __name__ = "new_wrapper"

    @hookimpl(wrapper=True)
    def authenticate(self) -> Any:
        return (yield)


class OldWrapper:
    __name__ = "old_wrapper"

    @hookimpl(hookwrapper=True)
    def lifespan(self) -> Any:
        yield


@pytest.mark.parametrize(("plugin", "hook"), [(NewWrapper(), "authenticate"),
                                              (OldWrapper(), "lifespan")])
async def test_a_hook_wrapper_is_refused_at_start_up(make_gateway: Any, plugin: Any,
                                                     hook: str) -> None:
    with pytest.raises(PluginError) as caught:
        await make_gateway({}, plugins=[plugin])
    name = plugin.__name__
    assert str(caught.value).startswith(
        f"{name} implements {hook} as a pluggy wrapper, which first-proxy cannot honour")
    assert "tryfirst=True or trylast=True" in str(caught.value)


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


# -- backends ---------------------------------------------------------------------------


def _completion(model: str, text: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})


class Canned(Backend):
    """Answers every call with its own name; records what the core asked of it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.validated: list[str] = []
        self.dispatched: list[str] = []
        self.checked: list[str] = []

    def validate(self, target: Target, path: str) -> list[tuple[str, str]]:
        self.validated.append(target.name)
        unknown = set(target.options) - {"colour"}
        return [(f"{path}.{key}", f"unknown key for backend {self.name}") for key in sorted(unknown)]

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
        self.dispatched.append(target.name)
        return UpstreamResponse(status=200, headers={"Content-Type": "application/json"},
                                body=_completion(call.model, f"{self.name} answered"))

    async def status(self, target: Target, gateway: Gateway) -> Status:
        self.checked.append(target.name)
        return Status(reachable=True, queue_depth=1)


class Owner:
    """A plugin that registers the backends it is given."""

    def __init__(self, name: str, *backends: Any) -> None:
        self.__name__ = name
        self.backends = backends

    @hookimpl
    def register_backends(self, register: Any) -> None:
        for backend in self.backends:
            register(backend)


async def test_hook_register_backends(make_gateway: Any) -> None:
    one, two = Canned("one"), Canned("two")
    server = await make_gateway({"models": {"m": {"targets": [
        {"name": "x", "backend": "one", "colour": "red"}, {"name": "y", "backend": "two"}]}}},
        plugins=[Owner("first_one", one), Owner("first_two", two)])
    status, headers, body = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "x")
    assert body["choices"][0]["message"]["content"] == "one answered"
    await server.gateway.refresh_statuses()
    # Each backend is asked about its own targets only.
    assert one.dispatched == ["x"] and two.dispatched == []
    assert set(one.validated) == set(one.checked) == {"x"}
    assert set(two.validated) == set(two.checked) == {"y"}
    assert server.gateway.statuses["m/y"].queue_depth == 1

    with pytest.raises(ConfigError) as invalid:
        await make_gateway({"models": {"m": {"targets": [{"backend": "one", "size": 3}]}}},
                           plugins=[Owner("first_one", Canned("one"))])
    assert invalid.value.problems == [("models.m.targets[0].size", "unknown key for backend one")]
    with pytest.raises(ConfigError) as unknown:
        await make_gateway({"models": {"m": {"targets": [{"backend": "three"}]}}},
                           plugins=[Owner("first_one", Canned("one"))])
    assert unknown.value.problems == [(
        "models.m.targets[0].backend",
        "no installed plugin dispatches backend 'three' (installed backends: one)")]


async def test_a_backend_name_registered_twice_is_a_configuration_error(make_gateway: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_gateway({}, plugins=[Owner("first_a", Canned("one")),
                                        Owner("first_b", Canned("one"))])
    assert caught.value.problems == [(
        "plugins.first_b", "backend 'one' is registered by both first_a and first_b; "
        "uninstall or disable one of them")]


class NotABackend:
    name = "plain"

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> None:
        raise AssertionError("never called")


async def test_what_is_not_a_backend_is_refused(make_gateway: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_gateway({}, plugins=[Owner("first_odd", NotABackend(), Backend())])
    assert [path for path, _ in caught.value.problems] == ["plugins.first_odd"] * 2
    assert all("which is not a first_proxy.Backend with a name" in message
               for _, message in caught.value.problems)


# -- settings and lifespans --------------------------------------------------------------


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
    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        self.started = True
        yield


class Quiet:
    """Has nothing to say about any configuration."""

    @hookimpl
    def check_config(self) -> list[tuple[str, str]]:
        return []


async def test_hook_check_config(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    models = {"m": targets(reference_upstream, "a")}
    settings = Settings()
    # At start-up, before any lifespan, together with the core's own problems.
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


class Phase:
    """A plugin whose lifespan notes when it starts and stops in ``events``."""

    def __init__(self, name: str, events: list[tuple[str, str]], *, fail_start: bool = False,
                 fail_stop: bool = False) -> None:
        self.__name__ = name
        self.events = events
        self.fail_start = fail_start
        self.fail_stop = fail_stop

    @hookimpl
    def lifespan(self, gateway: Gateway) -> contextlib.AbstractAsyncContextManager[None]:
        return self._span(gateway)

    @contextlib.asynccontextmanager
    async def _span(self, gateway: Gateway) -> AsyncIterator[None]:
        if self.fail_start:
            raise ConnectionRefusedError("the licence server refused\nsecond line")
        # The store is open and the plugin's settings are at hand.
        assert gateway.store is not None
        self.events.append(("start", gateway.plugin_config(self.__name__).get("as", self.__name__)))
        try:
            yield
        finally:
            self.events.append(("stop", self.__name__))
            if self.fail_stop:
                raise RuntimeError(f"{self.__name__} could not let go")


class PhasedBackend(Backend):
    name = "phased"

    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events

    @contextlib.asynccontextmanager
    async def _span(self) -> AsyncIterator[None]:
        self.events.append(("start", "backend phased"))
        yield
        self.events.append(("stop", "backend phased"))

    def lifespan(self, gateway: Gateway) -> contextlib.AbstractAsyncContextManager[None]:
        return self._span()


async def test_hook_lifespan(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    events: list[tuple[str, str]] = []
    server = await make_gateway(
        {"plugins": {"first": {"as": "first, configured"}},
         "models": {"m": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend(), Phase("first", events), Phase("second", events),
                 Owner("first_phased", PhasedBackend(events))])
    # In plugin order (the most recently registered first), the backends' after the plugins'.
    assert events == [("start", "second"), ("start", "first, configured"),
                      ("start", "backend phased")]
    assert (await post(server, "m"))[0] == 200
    await server.close()
    # Left in reverse, and before the store closes: the request's row is written after them.
    assert events[3:] == [("stop", "backend phased"), ("stop", "first"), ("stop", "second")]
    store = await open_store(server.config.store)
    try:
        assert [r["status"] for r in await store.recent_requests()] == [200]
    finally:
        await store.close()


async def test_a_lifespan_that_cannot_start_stops_those_started(make_gateway: Any) -> None:
    events: list[tuple[str, str]] = []
    # The failing one is asked last: registered first.
    plugins = [Phase("refuses", events, fail_start=True), Phase("a", events), Phase("b", events)]
    with pytest.raises(StartupError) as caught:
        await make_gateway({}, plugins=plugins)
    assert str(caught.value) == ("plugin refuses could not start: "
                                 "ConnectionRefusedError: the licence server refused")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert events == [("start", "b"), ("start", "a"), ("stop", "a"), ("stop", "b")]


class RefusesWithConfigError:
    __name__ = "refuses"

    @hookimpl
    @contextlib.asynccontextmanager
    async def lifespan(self, gateway: Gateway) -> AsyncIterator[None]:
        raise ConfigError(gateway.config.source, [("plugins.refuses.key", "revoked")])
        yield


async def test_a_lifespan_may_refuse_with_key_paths(make_gateway: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_gateway({"plugins": {"refuses": {"key": "k"}}},
                           plugins=[RefusesWithConfigError()])
    assert caught.value.problems == [("plugins.refuses.key", "revoked")]


async def test_a_lifespan_that_fails_to_stop_does_not_skip_the_others(
        make_gateway: Any, reference_upstream: ReferenceUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, str]] = []
    server = await make_gateway(
        {"models": {"m": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend(), Phase("a", events), Phase("stuck", events, fail_stop=True),
                 Phase("c", events)])
    assert (await post(server, "m"))[0] == 200
    await server.close()
    assert events[3:] == [("stop", "a"), ("stop", "stuck"), ("stop", "c")]
    failed = [r for r in caplog.records if r.getMessage() == "plugin stuck failed to stop cleanly"]
    assert len(failed) == 1 and "could not let go" in str(failed[0].exc_info[1])
    # The core's own closing ran too: the request log was written out.
    store = await open_store(server.config.store)
    try:
        assert [r["status"] for r in await store.recent_requests()] == [200]
    finally:
        await store.close()


# -- routes -----------------------------------------------------------------------------


class Routes:
    """Routes of every kind: authenticated, with their own secret, Anthropic-shaped, failing."""

    __name__ = "first_routes"

    @hookimpl
    def register_routes(self, register: Any) -> None:
        register("GET", "/routes/whoami", self.whoami)
        register("POST", "/routes/callback/{task}", self.callback, auth=False)
        register("POST", "/routes/v1/messages", self.messages, errors=ANTHROPIC, x_api_key=True)
        register("GET", "/routes/broken", self.broken)

    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"user": request[IDENTITY].user_id})

    async def callback(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Task-Secret") != "secret-of-t1":
            raise AuthenticationError("This callback's task secret is wrong.",
                                      code="bad_task_secret")
        return web.json_response({"task": request.match_info["task"],
                                  "identity": IDENTITY in request})

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "max_tokens" not in body:
            raise BadRequest("max_tokens is required.", param="max_tokens")
        return web.json_response({"type": "message", "user": request[IDENTITY].user_id})

    async def broken(self, request: web.Request) -> web.Response:
        raise RuntimeError("a bug with a secret in it: sk-hidden")


async def test_hook_register_routes(make_gateway: Any) -> None:
    server = await make_gateway({}, plugins=[Routes()])
    # Authenticated by the core, in OpenAI's shape, with the request id.
    status, headers, body = await request(server, "GET", "/routes/whoami")
    assert status == 401 and body["error"]["code"] == "missing_credentials"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert headers["X-Request-Id"]
    status, headers, body = await request(server, "GET", "/routes/whoami",
                                          {**AUTH, "X-Request-Id": "route-1"})
    assert (status, headers["X-Request-Id"], body) == (200, "route-1", {"user": "key:tester"})

    # auth=False: the route checks a credential of its own; no identity is looked for.
    status, _, body = await request(server, "POST", "/routes/callback/t1",
                                    {"X-Task-Secret": "secret-of-t1"})
    assert (status, body) == (200, {"task": "t1", "identity": False})
    status, _, body = await request(server, "POST", "/routes/callback/t1",
                                    {"X-Task-Secret": "guessed"})
    assert (status, body["error"]["code"]) == (401, "bad_task_secret")

    # An Anthropic-shaped route, which takes x-api-key.
    status, _, body = await request(server, "POST", "/routes/v1/messages", json={})
    assert status == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "'x-api-key: <key>'" in body["error"]["message"]
    status, _, body = await request(server, "POST", "/routes/v1/messages",
                                    {"x-api-key": TEST_KEY}, json={})
    assert (status, body) == (400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens is required."}})
    status, _, body = await request(server, "POST", "/routes/v1/messages",
                                    {"x-api-key": TEST_KEY}, json={"max_tokens": 5})
    assert (status, body) == (200, {"type": "message", "user": "key:tester"})

    # A failing handler: a 500 that shows only the request id; another method: a 405.
    status, headers, body = await request(server, "GET", "/routes/broken", AUTH)
    assert status == 500 and "sk-hidden" not in body["error"]["message"]
    assert headers["X-Request-Id"] in body["error"]["message"]
    status, headers, body = await request(server, "DELETE", "/routes/whoami", AUTH)
    assert (status, headers["Allow"]) == (405, "GET")

    text = await metrics(server)
    for route, code, count in [("GET /routes/whoami", 401, 1), ("GET /routes/whoami", 200, 1),
                               ("POST /routes/callback/{task}", 200, 1),
                               ("POST /routes/callback/{task}", 401, 1),
                               ("POST /routes/v1/messages", 401, 1),
                               ("POST /routes/v1/messages", 400, 1),
                               ("GET /routes/broken", 500, 1)]:
        assert (f'first_proxy_route_requests_total{{plugin="first_routes",route="{route}",'
                f'status="{code}"}} {count:.1f}') in text, (route, code)


class Squatter:
    def __init__(self, name: str, method: str, path: str) -> None:
        self.__name__ = name
        self.method, self.path = method, path

    @hookimpl
    def register_routes(self, register: Any) -> None:
        register(self.method, self.path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response({})


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"),
                                              ("GET", "/v1/chat/completions"),
                                              ("GET", "/metrics")])
async def test_a_route_the_core_serves_cannot_be_taken(make_gateway: Any, method: str,
                                                       path: str) -> None:
    with pytest.raises(PluginError) as caught:
        await make_gateway({}, plugins=[Squatter("first_squatter", method, path)])
    assert str(caught.value) == (f"first_squatter adds the route {method} {path}, which is taken "
                                 "already; choose another path")


async def test_two_plugins_cannot_add_the_same_route(make_gateway: Any) -> None:
    # first_b, registered last, is asked first.
    with pytest.raises(PluginError, match="first_a adds the route GET /files, which is taken"):
        await make_gateway({}, plugins=[Squatter("first_a", "GET", "/files"),
                                        Squatter("first_b", "GET", "/files")])
    # Another method on a plugin's path is another route.
    server = await make_gateway({}, plugins=[Squatter("first_a", "GET", "/files"),
                                             Squatter("first_b", "POST", "/files")])
    assert (await request(server, "POST", "/files", AUTH))[0] == 200


# -- authentication and authorization ----------------------------------------------------


class SiteTokens:
    """Owns tokens starting ``site-``: ``site-revoked`` is rejected; notes every credential."""

    __name__ = "first_site_tokens"

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    @hookimpl
    def authenticate(self, request: web.Request, credential: str | None) -> Identity | None:
        assert isinstance(request, web.Request)
        self.seen.append(credential)
        if credential is None or not credential.startswith("site-"):
            return None
        if credential == "site-revoked":
            raise AuthenticationError("that token was revoked", code="token_revoked")
        return Identity(user_id=f"site:{credential.removeprefix('site-')}")


async def test_hook_authenticate(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    tokens = SiteTokens()
    server = await make_gateway(
        {"auth": api_keys({"name": "bob", "key": "sk-bob-123456789"}),
         "models": {"m": targets(reference_upstream, "a")}},
        plugins=[ReferenceBackend(), tokens, Routes()])
    assert (await post(server, "m", headers={"Authorization": "Bearer site-ada"}))[0] == 200
    # An API key is recognised by the built-in check first: no other plugin ever sees it.
    assert (await post(server, "m", headers={"Authorization": "Bearer sk-bob-123456789"}))[0] == 200
    status, _, body = await post(server, "m", headers={"Authorization": "Bearer site-revoked"})
    assert (status, body["error"]) == (401, {"message": "that token was revoked", "type":
                                             "authentication_error", "param": None,
                                             "code": "token_revoked"})
    assert (await post(server, "m", headers={"Authorization": "Bearer nobody-knows"}))[0] == 401
    # x-api-key is read only where a route takes it.
    status, _, body = await post(server, "m", headers={"x-api-key": "site-ada"})
    assert (status, body["error"]["code"]) == (401, "missing_credentials")
    status, _, body = await request(server, "POST", "/routes/v1/messages",
                                    {"x-api-key": "site-ada"}, json={"max_tokens": 1})
    assert (status, body["user"]) == (200, "site:ada")
    assert (await request(server, "POST", "/routes/v1/messages", {"x-api-key": TEST_KEY},
                          json={"max_tokens": 1}))[0] == 200
    assert tokens.seen == ["site-ada", "site-revoked", "nobody-knows", None, "site-ada"]
    assert [r["user"] for r in await logged_rows(server)] == [
        "site:ada", "key:bob", None, None, None]


class Gatekeeper:
    @hookimpl
    def authorize(self, identity: Identity, model: str, target: Target | None) -> Denial | None:
        if target is None and model == "secret":
            return Denial(f"{identity.name} may not use secret")
        if target is not None and target.name == "reserved":
            return Denial("target reserved is reserved", code="reserved")
        return None


async def test_hook_authorize(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway(
        {"models": {"m": targets(reference_upstream, "reserved", "b"),
                    "secret": targets(reference_upstream, "b"),
                    "only-reserved": targets(reference_upstream, "reserved")}},
        plugins=[ReferenceBackend(), Gatekeeper()])
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "b")
    status, _, body = await post(server, "secret")
    assert (status, body["error"]["message"]) == (403, "tester may not use secret")
    status, _, body = await post(server, "only-reserved")
    assert (status, body["error"]["code"]) == (403, "reserved")
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    listed = await asyncio.to_thread(client.models.list)
    assert sorted(m.id for m in listed.data) == ["m"]


# -- limits as leases -------------------------------------------------------------------


class Held:
    """A lease that notes how it ended."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.ended: list[tuple[str, dict[str, Any] | None]] = []

    def settle(self, usage: Mapping[str, Any]) -> None:
        self.ended.append(("settle", dict(usage)))

    async def release(self) -> None:
        await asyncio.sleep(0)
        self.ended.append(("release", None))


class Ledger:
    """A limiter that admits every call under a lease."""

    def __init__(self, name: str = "first_ledger") -> None:
        self.__name__ = name
        self.leases: list[Held] = []

    @hookimpl
    def check_limits(self, call: Call) -> Held:
        self.leases.append(Held(call.request_id))
        return self.leases[-1]

    def ended(self) -> list[list[tuple[str, Any]]]:
        return [lease.ended for lease in self.leases]


class Refuser:
    __name__ = "first_refuser"

    def __init__(self) -> None:
        self.asked = 0

    @hookimpl
    def check_limits(self, identity: Identity) -> Denial:
        self.asked += 1
        return Denial(f"{identity.name} is over quota", status=429, code="quota_exceeded",
                      retry_after=7)


async def test_hook_check_limits(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway(
        {"models": {"m": targets(reference_upstream, "a"),
                    "secret": targets(reference_upstream, "a"),
                    "only-reserved": targets(reference_upstream, "reserved")}},
        plugins=[ReferenceBackend(), Gatekeeper(), ledger])
    status, _, body = await post(server, "m", headers={**AUTH, "X-Request-Id": "admitted"})
    assert status == 200
    # The lease is settled with the usage the caller got.
    assert ledger.ended() == [[("settle", body["usage"])]]
    assert ledger.leases[0].request_id == "admitted"
    # Not asked for what cannot be routed: an unknown model, a forbidden one, one whose every
    # target is refused, nor for listings.
    assert (await post(server, "nope"))[0] == 404
    assert (await post(server, "secret"))[0] == 403
    assert (await post(server, "only-reserved"))[0] == 403
    assert (await request(server, "GET", "/v1/models", AUTH))[0] == 200
    assert len(ledger.leases) == 1


async def test_the_first_denial_stops_the_limiters_and_releases_the_leases(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    before, after, refuser = Ledger("first_before"), Ledger("first_after"), Refuser()
    # Asked in plugin order, the most recently registered first: before, refuser, after.
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), after, refuser, before])
    status, headers, body = await post(server, "m")
    assert (status, headers["Retry-After"], body["error"]["code"]) == (429, "7", "quota_exceeded")
    assert body["error"]["message"] == "tester is over quota"
    assert before.ended() == [[("release", None)]]
    assert (refuser.asked, after.leases) == (1, [])
    assert not reference_upstream.received


class QuotaServiceDown:
    __name__ = "first_quota_service"

    @hookimpl
    async def check_limits(self) -> None:
        raise NoTargetAvailable("The quota service cannot be reached; try again in a minute.",
                                code="quota_service_down")


async def test_a_limiter_that_fails_releases_the_leases_already_taken(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), QuotaServiceDown(), ledger])
    status, _, body = await post(server, "m")
    assert (status, body["error"]["code"]) == (503, "quota_service_down")
    assert ledger.ended() == [[("release", None)]]
    assert not reference_upstream.received


async def test_a_streamed_call_settles_with_its_usage_chunk(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), ledger])
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    async with client:
        asked = [chunk async for chunk in await client.chat.completions.create(
            model="m", messages=HI, stream=True, stream_options={"include_usage": True})]
        hidden = [chunk async for chunk in await client.chat.completions.create(
            model="m", messages=HI, stream=True)]
    usage = asked[-1].usage.model_dump(exclude_none=True)
    assert usage["completion_tokens"] > 0
    assert all(chunk.usage is None for chunk in hidden)  # asked for by the core, not shown
    assert ledger.ended() == [[("settle", usage)], [("settle", usage)]]


async def test_a_lease_is_released_when_every_target_fails(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a", "b")}},
                                plugins=[ReferenceBackend(), ledger])
    reference_upstream.fail_status = 500
    assert (await post(server, "m"))[0] == 502
    assert ledger.ended() == [[("release", None)]]


async def test_a_lease_is_released_when_the_caller_leaves_mid_stream(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), ledger])
    reference_upstream.chunk_delay = 0.05
    async with aiohttp.ClientSession() as session, session.post(
            f"{server.base_url}/completions", headers=AUTH,
            json={"model": "m", "prompt": LONG, "stream": True}) as response:
        assert (await response.content.readline()).startswith(b"data: ")
    await eventually_ended(ledger)
    assert ledger.ended() == [[("release", None)]]
    assert reference_upstream.cancelled == 1


async def test_a_lease_is_released_when_shutdown_cuts_a_stream(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway({"server": {"shutdown_grace": 1},
                                 "models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), ledger])
    reference_upstream.chunk_delay = 0.05
    async with aiohttp.ClientSession() as session, session.post(
            f"{server.base_url}/completions", headers=AUTH,
            json={"model": "m", "prompt": LONG, "stream": True}) as response:
        assert (await response.content.readline()).startswith(b"data: ")
        closing = asyncio.create_task(server.close())
        rest = await response.content.read()
        await closing
    assert b'"code":"gateway_shutting_down"' in rest
    assert ledger.ended() == [[("release", None)]]


async def eventually_ended(ledger: Ledger) -> None:
    await eventually(lambda: all(lease.ended for lease in ledger.leases), within=10)


# -- one pipeline, with or without HTTP --------------------------------------------------


async def test_the_pipeline_runs_without_an_http_request(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    """A batch's line goes through the same limits and leaves the same log row as HTTP."""
    ledger = Ledger()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), ledger])
    gateway = server.gateway
    status, _, http_body = await post(server, "m", headers={**AUTH, "X-Request-Id": "over-http"})
    assert status == 200

    identity = Identity(user_id="key:tester", username="tester")
    raw = orjson.dumps({"model": "m", "messages": HI})
    call = Call(endpoint="chat/completions", model="m", body=orjson.loads(raw), raw=raw,
                stream=False, identity=identity, request_id="batch-1-line-1")
    row = RequestRecord(time.time(), call.request_id, call.endpoint, user=identity.user_id,
                        started=time.perf_counter(), extra={"batch_id": "batch-1"})
    answer = await pipeline.run(gateway, call, row)
    row.status = answer.status
    gateway.record(row)
    assert answer.status == 200 and not answer.streaming
    body = orjson.loads(answer.body or b"")
    assert body["choices"] == http_body["choices"] and body["usage"] == http_body["usage"]

    rows = {r["request_id"]: r for r in await server.logged()}
    over_http, in_batch = rows["over-http"], rows["batch-1-line-1"]
    for key in ("endpoint", "user", "model", "target", "status", "prompt_tokens",
                "completion_tokens", "stream", "attempts"):
        assert in_batch[key] == over_http[key], key
    assert (over_http["extra"], in_batch["extra"]) == (None, {"batch_id": "batch-1"})
    assert ledger.ended() == [[("settle", http_body["usage"])], [("settle", body["usage"])]]

    # A stream, delivered to a buffer: the usage chunk the core asked for is kept out of it.
    raw = orjson.dumps({"model": "m", "messages": HI, "stream": True})
    call = Call(endpoint="chat/completions", model="m", body=orjson.loads(raw), raw=raw,
                stream=True, identity=identity, request_id="batch-1-line-2")
    row = RequestRecord(time.time(), call.request_id, call.endpoint, started=time.perf_counter())
    answer = await pipeline.run(gateway, call, row)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    assert answer.streaming and await answer.stream_to(write, write) is None
    streamed = b"".join(written)
    assert streamed.endswith(b"data: [DONE]\n\n") and b'"usage"' not in streamed
    assert row.completion_tokens == body["usage"]["completion_tokens"]
    assert ledger.ended()[2] == [("settle", body["usage"])]


async def test_a_caller_who_leaves_a_pipeline_stream_is_not_the_targets_failure(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    ledger = Ledger()
    server = await make_gateway({"models": {"m": targets(reference_upstream, "a")}},
                                plugins=[ReferenceBackend(), ledger])
    raw = orjson.dumps({"model": "m", "prompt": LONG, "stream": True})
    call = Call(endpoint="completions", model="m", body=orjson.loads(raw), raw=raw, stream=True,
                identity=Identity(user_id="u"), request_id="left")
    row = RequestRecord(time.time(), call.request_id, call.endpoint, started=time.perf_counter())
    answer = await pipeline.run(server.gateway, call, row)

    async def gone(data: bytes) -> None:
        # What aiohttp raises when the caller's connection has closed.
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    with pytest.raises(ConnectionResetError):
        await answer.stream_to(gone, gone)
    assert ledger.ended() == [[("release", None)]]
    assert "midstream" not in await metrics(server)


# -- target order and status -------------------------------------------------------------


class Chooser:
    """Notes the order it is given; reverses it, keeps it (None), or rules every target out."""

    def __init__(self, name: str = "first_chooser", mode: str = "reverse") -> None:
        self.__name__ = name
        self.mode = mode
        self.seen: list[list[str]] = []

    @hookimpl
    def select_target(self, model: str, candidates: Sequence[Target],
                      statuses: Mapping[str, Status]) -> list[Target] | None:
        assert model == "m" and set(statuses) == {"m/busy", "m/idle"}
        self.seen.append([t.name for t in candidates])
        if self.mode == "reverse":
            return list(reversed(candidates))
        if self.mode == "keep":
            return None
        return []


async def test_hook_select_target(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    first, second = Chooser("first_one", "keep"), Chooser("first_two", "keep")
    server = await make_gateway(
        {"clusters": {"busy": {}, "idle": {}},
         "models": {"m": {"targets": [
             {**targets(reference_upstream, "busy")["targets"][0], "cluster": "busy"},
             {**targets(reference_upstream, "idle")["targets"][0], "cluster": "idle"}]}}},
        plugins=[ReferenceBackend(), second, first])
    gateway = server.gateway
    running = {"reference-model": "running"}
    gateway.push_status("busy", Status(reachable=True, models=running, queue_depth=5))
    gateway.push_status("idle", Status(reachable=True, models=running, queue_depth=0))
    # The built-in order comes first: the shorter queue, although listed second.
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "idle")
    assert first.seen == second.seen == [["idle", "busy"]]
    # A chain: each plugin gets the order the one before it returned.
    first.mode = "reverse"
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "busy")
    assert (first.seen[-1], second.seen[-1]) == (["idle", "busy"], ["busy", "idle"])
    second.mode = "rule out all"
    status, _, body = await post(server, "m")
    assert status == 503
    assert body["error"]["message"].startswith("No target for 'm' is available")


class Scheduler:
    """``report_status`` for clusters whose ``status:`` is ``test-pbs``: one answer per cluster."""

    __name__ = "first_scheduler"

    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str]]] = []
        self.state = "queued"

    @hookimpl
    async def report_status(self, cluster: str, settings: Mapping[str, Any],
                            targets: Sequence[Target]) -> Status | None:
        self.asked.append((cluster, sorted(t.name for t in targets)))
        if settings.get("status") != "test-pbs":
            return None
        if settings.get("broken"):
            raise ConnectionError("qstat did not answer")
        return Status(reachable=True, models={"reference-model": self.state}, queue_depth=4)


def clustered(upstream: ReferenceUpstream, **places: str) -> dict[str, Any]:
    """Model ``m`` with a target per name in ``places``, on the cluster it names."""
    return {"m": {"targets": [{**targets(upstream, name)["targets"][0], "cluster": cluster}
                              for name, cluster in places.items()]}}


async def test_hook_report_status(make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    scheduler = Scheduler()
    server = await make_gateway(
        {"clusters": {"polaris": {"status": "test-pbs"}, "sophia": {"status": "other"}},
         "models": clustered(reference_upstream, p1="polaris", p2="polaris", s1="sophia",
                             here="local")},
        plugins=[ReferenceBackend(), scheduler])
    gateway = server.gateway
    await eventually(lambda: len(scheduler.asked) == 2)  # the round at start-up is over
    scheduler.asked.clear()
    await gateway.refresh_statuses()
    # Once per declared cluster, with the targets on it.
    assert sorted(scheduler.asked) == [("polaris", ["p1", "p2"]), ("sophia", ["s1"])]
    for key in ("m/p1", "m/p2"):
        assert gateway.statuses[key].models == {"reference-model": "queued"}
        assert gateway.statuses[key].checked_at > 0
    assert "m/s1" not in gateway.statuses and "m/here" not in gateway.statuses
    # A queued model ranks above a target never checked (docs/federation.md): it will run.
    assert (await post(server, "m"))[1]["X-First-Target"] in ("p1", "p2")
    # A push applies at once, to every target on the cluster.
    gateway.push_status("polaris", Status(reachable=True, models={"reference-model": "running"}))
    assert [gateway.statuses[k].models["reference-model"] for k in ("m/p1", "m/p2")] == [
        "running", "running"]
    assert (await post(server, "m"))[1]["X-First-Target"] in ("p1", "p2")
    status, _, shown = await request(server, "GET", "/status", AUTH)
    assert status == 200
    by_name = {t["name"]: t["status"] for t in shown["models"][0]["targets"]}
    assert by_name["p2"]["models"] == {"reference-model": "running"} and by_name["s1"] is None


async def test_a_cluster_whose_scheduler_fails_is_not_taken_for_down(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway(
        {"clusters": {"polaris": {"status": "test-pbs", "broken": True}},
         "models": clustered(reference_upstream, p1="polaris")},
        plugins=[ReferenceBackend(), Scheduler()])
    await server.gateway.refresh_statuses()
    assert server.gateway.cluster_statuses["polaris"].last_error == (
        "ConnectionError: qstat did not answer")
    # The target's state is unknown, not down: the built-in order ranks it so.
    status = server.gateway.statuses["m/p1"]
    assert (status.reachable, status.detail["state"]) == (False, "unknown")
    target = server.gateway.config.models["m"].targets[0]
    assert selection.rank(target, status)[0] == selection.rank(target, None)[0]
    assert (await post(server, "m"))[0] == 200


async def test_a_target_on_an_undeclared_cluster_is_a_configuration_error(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    with pytest.raises(ConfigError) as caught:
        await make_gateway({"clusters": {"polaris": {}, "sophia": {}},
                            "models": clustered(reference_upstream, a="polaris", b="aurora")},
                           plugins=[ReferenceBackend()])
    assert caught.value.problems == [("models.m.targets[1].cluster", "cluster 'aurora' is not "
                                      "declared under clusters: (declared: polaris, sophia)")]


async def test_a_cluster_under_maintenance_is_skipped(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await make_gateway(
        {"clusters": {"polaris": {}, "sophia": {"maintenance": "back at 18:00 UTC"}},
         "models": clustered(reference_upstream, s1="sophia", p1="polaris")},
        plugins=[ReferenceBackend()])
    status, headers, _ = await post(server, "m")
    assert (status, headers["X-First-Target"]) == (200, "p1")
    status, headers, body = await post(server, "m", path="/resource_server/sophia/reference/v1")
    assert (status, headers["Retry-After"]) == (503, "300")
    assert body["error"]["message"] == "sophia is under maintenance: back at 18:00 UTC"
    assert body["error"]["code"] == "maintenance"
    assert [r.path for r in reference_upstream.received] == ["/v1/chat/completions"]


# -- plugin data in the store ------------------------------------------------------------


class Tables:
    """Tables of its own, through versioned migrations."""

    __name__ = "first_tables"
    V1 = "CREATE TABLE tables_batches (id {autoid}, name TEXT NOT NULL, size {real})"
    V2 = "ALTER TABLE tables_batches ADD COLUMN state TEXT; CREATE INDEX tables_name " \
         "ON tables_batches (name)"

    def __init__(self, *migrations: str) -> None:
        self.migrations = migrations

    @hookimpl
    def register_migrations(self, register: Any) -> None:
        register("first_tables", self.migrations)


async def test_hook_register_migrations(make_gateway: Any, store_url: str) -> None:
    server = await make_gateway({"store": store_url}, plugins=[Tables(Tables.V1)])
    store = server.gateway.store
    assert await store.execute("INSERT INTO tables_batches (name, size) VALUES (?, ?)",
                               "b-1", 1.5) == 1
    # A plugin field in a request-log row, kept without a change to the core's schema.
    server.gateway.record(RequestRecord(time.time(), "with-extra", "chat/completions",
                                        status=200, extra={"batch_id": "b-1", "line": 3}))
    assert await server.logged()
    await server.close()

    # A second start applies only what is new: V1 again would fail (the table exists).
    server = await make_gateway({"store": store_url}, plugins=[Tables(Tables.V1, Tables.V2)])
    store = server.gateway.store
    assert await store.fetch("SELECT version FROM first_proxy_migrations WHERE name = ?",
                             "first_tables") == [{"version": 2}]
    assert await store.execute("UPDATE tables_batches SET state = ? WHERE name = ?",
                               "done", "b-1") == 1
    rows = await store.fetch("SELECT name, size, state FROM tables_batches WHERE name = ? "
                             "AND state <> '?'", "b-1")
    assert rows == [{"name": "b-1", "size": 1.5, "state": "done"}]
    [row] = await store.find_requests(RequestQuery(request_id="with-extra"))
    assert row["extra"] == {"batch_id": "b-1", "line": 3}


# -- commands ----------------------------------------------------------------------------


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
