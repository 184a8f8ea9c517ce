"""gateway.yaml: environment interpolation, typed values, and errors that name file and key path."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from first_proxy.backends import Backend
from first_proxy.config import (
    GatewayConfig,
    load_config,
    parse_config,
    read_config,
    read_config_data,
)
from first_proxy.errors import ConfigError
from first_proxy.gateway import check_wiring, config_problems
from first_proxy.hookspecs import hookimpl
from first_proxy.plugins import get_plugin_manager
from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, api_keys
from first_proxy.types import Target

SOURCE = "site/gateway.yaml"
REPO = Path(__file__).resolve().parents[1]


def target(**extra: Any) -> dict[str, Any]:
    return {"name": "a", "backend": "reference", "url": "http://127.0.0.1:9/v1", **extra}


def model(*targets: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"targets": list(targets) or [target()], **extra}


def parse(data: dict[str, Any], environ: dict[str, str] | None = None) -> GatewayConfig:
    return parse_config(data, source=SOURCE, environ=environ or {})


def config_error(data: Any, environ: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError ``data`` raises, after checking that its text names the file and every path."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source=SOURCE, environ=environ or {})
    error = info.value
    assert error.source == SOURCE
    text = str(error)
    assert text.startswith(f"{SOURCE}: {len(error.problems)} problem(s)")
    for path, message in error.problems:
        assert f"  {path}: {message}" in text
    return error


def at(error: ConfigError, path: str) -> str:
    """Every message reported for ``path``, joined; fails when there is none."""
    found = [message for where, message in error.problems if where == path]
    assert found, f"nothing reported at {path!r}; problems: {error.problems}"
    return " | ".join(found)


# -- the environment ---------------------------------------------------------------------


def test_variables_and_defaults_are_substituted() -> None:
    config = parse({
        "server": {"host": "${BIND}", "port": "${PORT:-9001}"},
        "models": {"m": model(target(url="http://${UP_HOST}:${UP_PORT:-8000}/v1",
                                     api_key="${PROVIDER_KEY:-}"))},
    }, environ={"BIND": "0.0.0.0", "UP_HOST": "gpu-node"})
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 9001
    (t,) = config.models["m"].targets
    assert t.url == "http://gpu-node:8000/v1"
    assert t.api_key == ""


def test_a_set_variable_wins_over_its_default() -> None:
    config = parse({"server": {"port": "${PORT:-9001}"}}, environ={"PORT": "7000"})
    assert config.server.port == 7000


def test_numbers_and_booleans_come_from_environment_strings() -> None:
    config = parse({
        "server": {"port": "${PORT}", "max_body_bytes": "${MAX_BODY}", "shutdown_grace": "${GRACE}"},
        "limits": {"requests_per_minute": "${RPM}"},
        "request_log": {"include_prompts": "${PROMPTS}"},
        "models": {"m": model(target(timeouts={"connect": "${CONNECT}"}))},
    }, environ={"PORT": "8443", "MAX_BODY": "4096", "GRACE": "2.5", "RPM": "120",
                "PROMPTS": "true", "CONNECT": "1.5"})
    assert config.server.port == 8443 and isinstance(config.server.port, int)
    assert config.server.max_body_bytes == 4096
    assert config.server.shutdown_grace == 2.5
    assert config.limits.requests_per_minute == 120.0
    assert config.request_log.include_prompts is True
    assert config.models["m"].targets[0].timeouts.connect == 1.5


def test_an_environment_string_that_is_not_a_number_is_reported() -> None:
    error = config_error({"server": {"port": "${PORT}"}}, environ={"PORT": "eighty"})
    assert "integer" in at(error, "server.port")
    assert "'eighty'" in at(error, "server.port")


def test_a_missing_variable_names_its_key_path_and_the_variable() -> None:
    error = config_error({"models": {"m": model(target(api_key="${PROVIDER_KEY}"))}})
    message = at(error, "models.m.targets[0].api_key")
    assert "PROVIDER_KEY" in message
    assert "${PROVIDER_KEY:-default}" in message


def test_the_real_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRST_PROXY_TEST_HOST", "10.1.2.3")
    config = parse_config({"server": {"host": "${FIRST_PROXY_TEST_HOST}"}})
    assert config.server.host == "10.1.2.3"


# -- types and unknown keys ----------------------------------------------------------------


@pytest.mark.parametrize(("data", "path", "expected"), [
    ({"server": [8080]}, "server", "mapping"),
    ({"server": {"port": [8080]}}, "server.port", "integer"),
    ({"server": {"port": 80.5}}, "server.port", "integer"),
    ({"server": {"port": True}}, "server.port", "integer"),
    ({"server": {"max_body_bytes": -1}}, "server.max_body_bytes", ">= 0"),
    ({"status": {"interval": "often"}}, "status.interval", "number"),
    ({"limits": {"requests_per_minute": True}}, "limits.requests_per_minute", "number"),
    ({"request_log": {"include_prompts": "yes"}}, "request_log.include_prompts", "true or false"),
    ({"store": ["sqlite:///a.db"]}, "store", "string"),
    ({"auth": ["alice"]}, "auth", "mapping"),
    ({"auth": {"api_keys": {"name": "x"}}}, "auth.api_keys", "list"),
    ({"auth": {"api_keys": ["sk-plain-key"]}}, "auth.api_keys[0]", "mapping"),
    ({"models": ["m"]}, "models", "mapping"),
    ({"models": {"m": "http://x"}}, "models.m", "mapping"),
    ({"models": {"m": model(allowed_groups="staff")}}, "models.m.allowed_groups", "list"),
    ({"models": {"m": model(target(allowed_groups=[1]))}}, "models.m.targets[0].allowed_groups",
     "list"),
    ({"models": {"m": model("a-string")}}, "models.m.targets[0]", "mapping"),
    ({"models": {"m": model(target(timeouts=30))}}, "models.m.targets[0].timeouts", "mapping"),
    ({"models": {"m": model(target(timeouts={"connect": "soon"}))}},
     "models.m.targets[0].timeouts.connect", "number"),
    ({"models": {"m": model(target(stream_usage="maybe"))}}, "models.m.targets[0].stream_usage",
     "true or false"),
    ({"models": {"m": model(target(max_connections=2.5))}}, "models.m.targets[0].max_connections",
     "integer"),
    ({"models": {"m": model({"name": "a", "url": "http://x/v1"})}}, "models.m.targets[0].backend",
     "required"),
    ({"plugins": {"p": ["on"]}}, "plugins.p", "mapping"),
    ({"plugins": {"p": {"enabled": "no"}}}, "plugins.p.enabled", "true or false"),
    ({"clusters": {"polaris": "pbs"}}, "clusters.polaris", "mapping"),
])
def test_wrong_types_are_reported_with_their_key_path(data: dict[str, Any], path: str,
                                                       expected: str) -> None:
    assert expected in at(config_error(data), path)


@pytest.mark.parametrize(("data", "path"), [
    ({"modles": {}}, "modles"),
    ({"server": {"prot": 8080}}, "server.prot"),
    ({"limits": {"rpm": 5}}, "limits.rpm"),
    ({"request_log": {"prompts": True}}, "request_log.prompts"),
    ({"auth": {"keys": []}}, "auth.keys"),
    ({"auth": {"api_keys": [{"name": "a", "key": TEST_KEY, "group": ["x"]}]}},
     "auth.api_keys[0].group"),
    ({"models": {"m": model(alowed_groups=["x"])}}, "models.m.alowed_groups"),
    ({"models": {"m": model(target(timeouts={"conect": 5}))}}, "models.m.targets[0].timeouts.conect"),
])
def test_unknown_keys_are_reported_with_the_keys_expected(data: dict[str, Any], path: str) -> None:
    assert "unknown key" in at(config_error(data), path)


def test_unknown_target_keys_are_reported_by_the_backend_at_start_up(tmp_path: Path) -> None:
    pytest.importorskip("first_openai_direct")
    config = parse({"models": {"m": model(target(backend="openai", timout=5))}})
    problems = dict(check_wiring(config, get_plugin_manager()))
    assert "unknown key" in problems["models.m.targets[0].timout"]


# -- targets, URLs, stores, keys ----------------------------------------------------------


@pytest.mark.parametrize("targets", [[], None, "a"])
def test_a_model_needs_targets(targets: Any) -> None:
    data = {"targets": targets} if targets is not None else {"description": "nothing"}
    assert "non-empty list" in at(config_error({"models": {"m": data}}), "models.m.targets")


def test_duplicate_target_names_are_reported() -> None:
    error = config_error({"models": {"m": model(target(), target(url="http://other/v1"))}})
    assert "duplicate target name 'a'" in at(error, "models.m.targets[1].name")


def test_the_same_target_name_in_two_models_is_fine() -> None:
    config = parse({"models": {"m": model(), "n": model()}})
    assert {t.key for t in config.targets()} == {"m/a", "n/a"}


@pytest.mark.parametrize("url", ["ftp://host/v1", "127.0.0.1:8000/v1", "localhost", ""])
def test_target_urls_must_be_http(url: str) -> None:
    assert "http://" in at(config_error({"models": {"m": model(target(url=url))}}),
                           "models.m.targets[0].url")


@pytest.mark.parametrize("store", ["mysql://db/x", "sqlite://relative.db", "first-proxy.db", ""])
def test_bad_store_urls_are_reported(store: str) -> None:
    assert "sqlite:///" in at(config_error({"store": store}), "store")


def test_postgres_store_urls_are_kept() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    assert parse({"store": url}).store == url


@pytest.mark.parametrize(("entry", "path", "expected"), [
    ({"name": "a", "key": TEST_KEY, "sha256": "0" * 64}, "auth.api_keys[0]", "exactly one"),
    ({"name": "a", "groups": ["staff"]}, "auth.api_keys[0]", "exactly one"),
    ({"name": "a", "key": "short"}, "auth.api_keys[0].key", "at least 8"),
    ({"name": "a", "sha256": "xyz" * 20}, "auth.api_keys[0].sha256", "64 hex"),
    ({"name": "a", "sha256": "ab" * 31}, "auth.api_keys[0].sha256", "64 hex"),
    ({"key": TEST_KEY}, "auth.api_keys[0].name", "required"),
    ({"name": "a", "key": TEST_KEY, "groups": "staff"}, "auth.api_keys[0].groups", "list"),
    ({"name": "a", "key": TEST_KEY, "requests_per_minute": "lots"},
     "auth.api_keys[0].requests_per_minute", "number"),
])
def test_bad_api_keys_are_reported(entry: dict[str, Any], path: str, expected: str) -> None:
    assert expected in at(config_error({"auth": {"api_keys": [entry]}}), path)


def test_duplicate_api_key_names_are_reported() -> None:
    error = config_error({"auth": api_keys({"name": "tester", "key": "another-key-123"})})
    assert "duplicate" in at(error, "auth.api_keys[1].name")


def test_api_keys_are_kept_only_as_their_sha256() -> None:
    upper = hashlib.sha256(b"hashed-key-123").hexdigest().upper()
    config = parse({"auth": {"api_keys": [
        {"name": "plain", "key": "${SITE_KEY}", "groups": ["staff"], "requests_per_minute": "30"},
        {"name": "hashed", "sha256": upper},
    ]}}, environ={"SITE_KEY": TEST_KEY})
    plain, hashed = config.auth.api_keys
    assert plain.sha256 == hashlib.sha256(TEST_KEY.encode()).hexdigest()
    assert plain.groups == frozenset({"staff"}) and plain.requests_per_minute == 30.0
    assert hashed.sha256 == upper.lower()
    assert TEST_KEY not in repr(config)


# -- whole files -----------------------------------------------------------------------


def test_several_problems_are_reported_at_once() -> None:
    error = config_error({
        "servr": {},
        "server": {"port": "http"},
        "store": "redis://x",
        "auth": {"api_keys": [{"name": "a", "key": "tiny"}]},
        "models": {"m": model(target(url="nope")), "n": {"targets": []}},
    })
    paths = {path for path, _ in error.problems}
    assert {"servr", "server.port", "store", "auth.api_keys[0].key", "models.m.targets[0].url",
            "models.n.targets"} <= paths


def test_a_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("server:\n  port: 8080\n   host: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    ((where, message),) = info.value.problems
    assert where == "line 3, column 8"
    assert message.startswith("not valid YAML")
    assert str(info.value).startswith(f"{path}: ")


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)
    assert "cannot read" in info.value.problems[0][1]


def test_a_file_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("- server\n- models\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [("(top level)", "expected a mapping at the top of the file, "
                                                   "got a list")]


def test_problems_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": model(target(url="${UPSTREAM}"))}}))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.source == str(path)
    assert re.search(r"^  models\.m\.targets\[0\]\.url: .*UPSTREAM", str(info.value), re.M)


def test_the_bundled_gateway_yaml_parses_with_its_defaults() -> None:
    config = load_config(REPO / "gateway.yaml", environ={})
    assert config.server.port == 8080
    (demo,) = config.models["demo-model"].targets
    assert demo.url == "http://127.0.0.1:8001/v1"
    assert demo.backend == "openai"
    assert (demo.cluster, demo.framework) == ("local", "vllm")  # the user guide's pinned path
    (key,) = config.auth.api_keys
    assert key.sha256 == hashlib.sha256(b"demo-key-change-me").hexdigest()
    assert config.store == f"sqlite:///{(REPO / 'first-proxy.db').resolve()}"
    pytest.importorskip("first_openai_direct")
    assert check_wiring(config, get_plugin_manager()) == []


def test_the_bundled_gateway_yaml_reads_its_variables() -> None:
    config = load_config(REPO / "gateway.yaml", environ={
        "FIRST_PROXY_DEMO_URL": "http://10.0.0.5:9000/v1", "FIRST_PROXY_PORT": "9090"})
    assert config.models["demo-model"].targets[0].url == "http://10.0.0.5:9000/v1"
    assert config.server.port == 9090


# -- the store path -----------------------------------------------------------------------


async def test_a_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    path = site / "gateway.yaml"
    path.write_text(yaml.safe_dump({"store": "sqlite:///data/log.db", "auth": api_keys(),
                                    "status": {"interval": 3600}}))
    config = load_config(path, environ={})
    expected = (site / "data" / "log.db").resolve()
    assert config.store == f"sqlite:///{expected}"
    async with GatewayServer(config):
        pass
    assert expected.is_file()


@pytest.mark.parametrize("store", ["sqlite:///:memory:", "sqlite:////var/lib/first-proxy/log.db"])
def test_memory_and_absolute_sqlite_paths_are_kept(tmp_path: Path, store: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"store": store}))
    assert load_config(path, environ={}).store == store


# -- backends and plugins at start-up -------------------------------------------------------


async def test_an_unknown_backend_is_reported_at_start_up(tmp_path: Path) -> None:
    config = {"store": f"sqlite:///{tmp_path}/g.db", "auth": api_keys(),
              "models": {"m": model(target(), target(name="b", backend="slurm-magic"))}}
    server = GatewayServer(config, plugins=[ReferenceBackend()])
    with pytest.raises(ConfigError) as info:
        await server.start()
    await server.close()
    (problem,) = info.value.problems
    assert problem[0] == "models.m.targets[1].backend"
    assert "'slurm-magic'" in problem[1] and "reference" in problem[1]
    assert info.value.source == "<test config>"


async def test_a_disabled_builtin_plugin_is_not_loaded(make_gateway: Any,
                                                        reference_upstream: Any) -> None:
    import aiohttp

    models = {"reference-model": model(target(url=reference_upstream.url))}
    body = {"model": "reference-model", "prompt": "hi"}
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    limited = await make_gateway({"limits": {"requests_per_minute": 1}, "models": models},
                                 plugins=[ReferenceBackend()])
    unlimited = await make_gateway({
        "limits": {"requests_per_minute": 1}, "models": models,
        "plugins": {"first_proxy.builtin.rate_limit": {"enabled": False}},
    }, plugins=[ReferenceBackend()])
    assert unlimited.gateway.pm.get_plugin("first_proxy.builtin.rate_limit") is None
    async with aiohttp.ClientSession(headers=headers) as http:
        statuses = []
        for server in (limited, limited, unlimited, unlimited, unlimited):
            async with http.post(f"{server.base_url}/completions", json=body) as response:
                statuses.append(response.status)
    assert statuses == [200, 429, 200, 200, 200]


async def test_a_disabled_entry_point_plugin_is_not_loaded(tmp_path: Path) -> None:
    pytest.importorskip("first_openai_direct")
    base = {"store": f"sqlite:///{tmp_path}/g.db", "auth": api_keys(),
            "models": {"m": model(target(backend="openai"))}}
    enabled = GatewayServer(base, load_entrypoints=True)
    assert enabled.gateway.pm.get_plugin("first_openai_direct") is not None

    disabled = GatewayServer({**base, "plugins": {"first_openai_direct": {"enabled": False}}},
                             load_entrypoints=True)
    assert disabled.gateway.pm.get_plugin("first_openai_direct") is None
    with pytest.raises(ConfigError) as info:
        await disabled.start()
    await disabled.close()
    assert "'openai'" in at(info.value, "models.m.targets[0].backend")


def test_plugin_settings_reach_the_gateway_without_enabled() -> None:
    config = parse({"plugins": {"site_auth": {"enabled": True, "realm": "lab"}, "bare": None}})
    assert config.plugins == {"site_auth": {"realm": "lab"}, "bare": {}}
    assert config.disabled_plugins == frozenset()


# -- every problem of a file at once ---------------------------------------------------------


class PickyBackend(Backend):
    name = "picky"

    def validate(self, target: Target, path: str) -> list[tuple[str, str]]:
        return [] if target.url else [(f"{path}.url", "required for backend picky")]


class Picky:
    """Backend ``picky``: needs a ``url`` and a ``region`` in ``plugins.picky``."""

    __name__ = "picky"

    @hookimpl
    def register_backends(self, register: Callable[[Backend], None]) -> None:
        register(PickyBackend())

    @hookimpl
    def check_config(self, config: GatewayConfig) -> list[tuple[str, str]]:
        if "region" in config.plugins.get("picky", {}):
            return []
        return [("plugins.picky.region", "required")]


#: A typo'd key, a URL without a scheme and an unknown backend, with a good target between.
THREE_PROBLEMS = {
    "server": {"host": "127.0.0.1", "prot": 8080},
    "plugins": {"picky": {"region": "north"}},
    "models": {"llama": {"targets": [
        {"name": "local", "backend": "picky", "url": "localhost:8000/v1"},
        {"name": "fine", "backend": "picky", "url": "http://127.0.0.1:9/v1"},
        {"name": "cluster", "backend": "slurm-magic", "url": "http://gpu-node:8000/v1"},
    ]}},
}
THREE_PATHS = ["server.prot", "models.llama.targets[0].url", "models.llama.targets[2].backend"]


def test_a_file_with_problems_is_read_as_far_as_it_goes() -> None:
    config = read_config_data(THREE_PROBLEMS, source=SOURCE, environ={})
    assert [path for path, _ in config.problems] == THREE_PATHS[:2]
    assert config.server.host == "127.0.0.1"
    assert config.plugins == {"picky": {"region": "north"}}
    assert [(t.name, t.backend, t.url) for t in config.models["llama"].targets] == [
        ("local", "picky", "localhost:8000/v1"), ("fine", "picky", "http://127.0.0.1:9/v1"),
        ("cluster", "slurm-magic", "http://gpu-node:8000/v1")]
    # Those that want a valid configuration still get the same problems raised.
    assert config_error(THREE_PROBLEMS).problems == list(config.problems)


def test_the_files_problems_and_the_plugins_come_together_in_file_order() -> None:
    pm = get_plugin_manager(load_entrypoints=False, plugins=[Picky()])
    config = read_config_data(THREE_PROBLEMS, source=SOURCE, environ={})
    problems = config_problems(config, pm)
    assert [path for path, _ in problems] == THREE_PATHS
    assert "'slurm-magic'" in problems[2][1] and "picky" in problems[2][1]

    # Plugins' problems sort in too, a missing key with the closest key the file has.
    moved = {"models": THREE_PROBLEMS["models"], "server": {"prot": 1}, "plugins": {"picky": {}}}
    config = read_config_data(moved, source=SOURCE, environ={})
    assert [path for path, _ in config_problems(config, pm)] == [
        "models.llama.targets[0].url", "models.llama.targets[2].backend", "server.prot",
        "plugins.picky.region"]


def test_a_key_the_file_got_wrong_is_reported_once() -> None:
    # The unset variable leaves url empty, which picky's validator would also report.
    pm = get_plugin_manager(load_entrypoints=False, plugins=[Picky()])
    config = read_config_data({"plugins": {"picky": {"region": "north"}}, "models": {"m": model(
        target(backend="picky", url="${UPSTREAM}"))}}, source=SOURCE, environ={})
    problems = config_problems(config, pm)
    assert [path for path, _ in problems] == ["models.m.targets[0].url"]
    assert "UPSTREAM" in problems[0][1]


def test_a_file_with_problems_is_read_from_disk_too(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(THREE_PROBLEMS, sort_keys=False))
    config = read_config(path, environ={})
    assert config.source == str(path)
    assert [p for p, _ in config.problems] == THREE_PATHS[:2]
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == list(config.problems)
    path.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(path, environ={})


async def test_start_up_reports_every_problem_and_starts_nothing(tmp_path: Path) -> None:
    data = {**THREE_PROBLEMS, "store": f"sqlite:///{tmp_path}/g.db", "auth": api_keys()}
    picky = Picky()
    server = GatewayServer(read_config_data(data, source=SOURCE, environ={}), plugins=[picky])
    with pytest.raises(ConfigError) as info:
        await server.start()
    await server.close()
    assert [path for path, _ in info.value.problems] == THREE_PATHS
    assert str(info.value).startswith(f"{SOURCE}: 3 problem(s)\n")
    assert not (tmp_path / "g.db").exists()
