"""first-example-backend tested as a third party tests a plugin: installed, loaded through its
entry point (``load_entrypoints=True``), called with the real ``openai`` SDK over loopback."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import first_example_backend as example
import openai
import pytest
import yaml
from click.testing import CliRunner

from first_proxy.cli import cli
from first_proxy.config import parse_config
from first_proxy.errors import ConfigError
from first_proxy.plugins import get_plugin_manager, list_plugins
from first_proxy.testing import TEST_KEY, GatewayServer, MakeGateway, eventually

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


async def parrot(make_gateway: MakeGateway, *targets: dict[str, Any],
                 **config: Any) -> GatewayServer:
    """A gateway with the installed plugins and one model, ``parrot``, on ``targets``."""
    targets = targets or ({"name": "plain", "backend": "echo"},)
    return await make_gateway({"models": {"parrot": {"targets": list(targets)}}, **config},
                              load_entrypoints=True)


def client(server: GatewayServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``first-proxy ARGS`` as a user runs it: the console script's own entry function."""
    return subprocess.run(
        [sys.executable, "-c", "from first_proxy.cli import main; main()", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_plugin_is_installed() -> None:
    rows = {row["name"]: row for row in list_plugins(get_plugin_manager())}
    assert rows[example.NAME]["version"] == "0.1.0"
    assert rows[example.NAME]["hooks"] == [
        "check_config", "lifespan", "register_backends", "register_commands", "register_routes"]


async def test_chat_completion_repeats_the_prompt(make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway)
    async with client(server) as api:
        answer = await api.chat.completions.create(
            model="parrot", messages=[{"role": "user", "content": "polly wants a cracker"}])
    assert answer.choices[0].message.content == "polly wants a cracker"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "parrot"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 4)


@pytest.mark.parametrize(("transform", "expected"), [
    ("echo", "one two three"), ("upper", "ONE TWO THREE"), ("reverse", "three two one")])
async def test_each_target_transforms_as_configured(make_gateway: MakeGateway, transform: str,
                                                    expected: str) -> None:
    server = await parrot(make_gateway, {"name": "t", "backend": "echo", "transform": transform,
                                         "model": "parrot-v2"})
    async with client(server) as api:
        answer = await api.completions.create(model="parrot", prompt="one two three")
    assert answer.choices[0].text == expected
    assert answer.model == "parrot-v2"  # the target's model: name, as an upstream reports it


async def test_stream_sends_a_word_per_event_and_hides_the_usage_chunk(
        make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway)
    async with client(server) as api:
        stream = await api.chat.completions.create(
            model="parrot", messages=[{"role": "user", "content": "to be or not"}], stream=True)
        chunks = [chunk async for chunk in stream]
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert words == ["to", " be", " or", " not"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage ...
    row = await server.log_row(stream.response.headers["x-request-id"])
    assert row["stream"] and row["completion_tokens"] == 4  # ... the log still has it


async def test_stream_with_usage_when_asked(make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway)
    async with client(server) as api:
        stream = await api.completions.create(model="parrot", prompt="a b c", stream=True,
                                              stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b c"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


async def test_answers_are_capped_by_max_tokens_and_the_plugin_setting(
        make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway, plugins={example.NAME: {"max_words": 3}})
    async with client(server) as api:
        capped = await api.completions.create(model="parrot", prompt="a b c d e f")
        asked = await api.completions.create(model="parrot", prompt="a b c d e f", max_tokens=2)
    assert (capped.choices[0].text, asked.choices[0].text) == ("a b c", "a b")


async def test_embeddings_are_refused_with_an_openai_error(make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway)
    async with client(server) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.embeddings.create(model="parrot", input="hello")
    assert "backend echo answers chat/completions and completions" in caught.value.message


async def test_target_problems_are_reported_at_start_up(make_gateway: MakeGateway) -> None:
    with pytest.raises(ConfigError) as caught:
        await parrot(make_gateway, {"name": "a", "backend": "echo", "url": "http://127.0.0.1:9/v1",
                                    "transform": "shout", "pace": -1, "voice": "parrot"})
    paths = [path for path, _ in caught.value.problems]
    assert paths == ["models.parrot.targets[0].url", "models.parrot.targets[0].transform",
                     "models.parrot.targets[0].pace", "models.parrot.targets[0].voice"]


@pytest.mark.parametrize(("settings", "problems"), [
    (None, []),
    ({}, []),
    ({"max_words": 1}, []),
    ({"max_words": 0}, [("plugins.first_example_backend.max_words",
                         "expected a whole number >= 1, got 0")]),
    ({"max_words": True}, [("plugins.first_example_backend.max_words",
                            "expected a whole number >= 1, got True")]),
    ({"max_words": "64"}, [("plugins.first_example_backend.max_words",
                            "expected a whole number >= 1, got '64'")]),
    ({"colour": "red"}, [("plugins.first_example_backend.colour",
                          "unknown setting (known: max_words)")]),
])
def test_check_config_reports_each_setting_problem(settings: dict[str, Any] | None,
                                                   problems: list[tuple[str, str]]) -> None:
    config = parse_config({} if settings is None else {"plugins": {example.NAME: settings}})
    assert example.check_config(config) == problems


async def test_setting_problems_are_reported_at_start_up(make_gateway: MakeGateway) -> None:
    with pytest.raises(ConfigError) as caught:
        await parrot(make_gateway, {"name": "a", "backend": "echo", "transform": "shout"},
                     plugins={example.NAME: {"max_words": 0, "colour": "red"}})
    # The core's problems and the plugin's, all at once.
    assert sorted(path for path, _ in caught.value.problems) == [
        "models.parrot.targets[0].transform", "plugins.first_example_backend.colour",
        "plugins.first_example_backend.max_words"]


def test_first_proxy_check_reports_setting_problems(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    config = {"plugins": {example.NAME: {"max_words": -3}},
              "models": {"parrot": {"targets": [{"name": "plain", "backend": "echo"}]}}}
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["check", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert f"{path}: 1 problem(s)" in result.output
    assert ("plugins.first_example_backend.max_words: expected a whole number >= 1, got -3"
            in result.output)

    config["plugins"][example.NAME]["max_words"] = 3
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["check", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK: 1 model(s), 1 target(s)" in result.output


async def test_a_disabled_plugin_is_not_loaded(make_gateway: MakeGateway) -> None:
    off = {example.NAME: {"enabled": False, "max_words": 0}}  # its settings are not checked
    with pytest.raises(ConfigError) as caught:
        await parrot(make_gateway, plugins=off)
    assert caught.value.problems[0][0] == "models.parrot.targets[0].backend"
    assert "'echo'" in caught.value.problems[0][1]
    server = await make_gateway({"plugins": off}, load_entrypoints=True)
    assert example.NAME not in server.gateway.state  # its lifespan never ran
    async with aiohttp.ClientSession() as http, http.get(
            f"{server.url}/example/echo/stats", headers=AUTH) as response:
        assert response.status == 404  # nor was its route added


async def test_status_reports_streams_in_progress(make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway, {"name": "slow", "backend": "echo", "pace": 0.2})
    gateway = server.gateway
    await gateway.refresh_statuses()
    status = gateway.statuses["parrot/slow"]
    assert (status.reachable, dict(status.models), status.running_requests) == (
        True, {"parrot": "running"}, 0)

    async with client(server) as api:
        stream = await api.completions.create(model="parrot", prompt="word " * 50, stream=True)
        first = await anext(aiter(stream))
        assert first.choices[0].text == "word"
        await gateway.refresh_statuses()
        assert gateway.statuses["parrot/slow"].running_requests == 1
        await stream.close()  # the caller goes away ten seconds early
    state: example.EchoState = gateway.state[example.NAME]
    await eventually(lambda: state.streaming["parrot/slow"] == 0, within=5)

    async with aiohttp.ClientSession() as http, http.get(
            f"{server.url}/status", headers=AUTH) as response:
        shown = await response.json()
    await gateway.refresh_statuses()
    target = shown["models"][0]["targets"][0]
    assert (target["backend"], target["status"]["reachable"]) == ("echo", True)
    assert gateway.statuses["parrot/slow"].detail == {"answered": 1}


async def test_the_stats_route_counts_answers_for_callers_with_a_key(
        make_gateway: MakeGateway) -> None:
    server = await parrot(make_gateway, {"name": "slow", "backend": "echo", "pace": 0.2})
    stats = f"{server.url}/example/echo/stats"
    async with aiohttp.ClientSession() as http:
        async with http.get(stats) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "missing_credentials"
        async with client(server) as api:
            await api.completions.create(model="parrot", prompt="hi")
            stream = await api.completions.create(model="parrot", prompt="word " * 50,
                                                  stream=True)
            await anext(aiter(stream))
            async with http.get(stats, headers={**AUTH, "X-Request-Id": "stats-1"}) as response:
                assert (response.status, response.headers["X-Request-Id"]) == (200, "stats-1")
                assert await response.json() == {"answered": 2, "streaming": {"parrot/slow": 1},
                                                 "asked_by": "tester"}
            await stream.close()
    metrics = server.gateway.metrics.render()
    assert ('first_proxy_route_requests_total{plugin="first_example_backend",'
            'route="GET /example/echo/stats",status="200"} 1.0') in metrics.decode()


async def test_shutdown_releases_the_state(make_gateway: MakeGateway,
                                           caplog: pytest.LogCaptureFixture) -> None:
    server = await parrot(make_gateway)
    async with client(server) as api:
        await api.completions.create(model="parrot", prompt="hi")
    caplog.set_level(logging.INFO, logger=example.NAME)
    await server.close()
    assert example.NAME not in server.gateway.state
    assert "backend echo answered 1 call(s)" in caplog.text


def test_the_cli_lists_the_plugin_and_runs_its_command(tmp_path: Path) -> None:
    listed = run_cli("plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert example.NAME in listed.stdout
    echoed = run_cli("example-echo", "the quick brown fox", "--transform", "reverse",
                     cwd=tmp_path)
    assert (echoed.returncode, echoed.stdout) == (0, "fox brown quick the\n"), echoed.stderr
