"""The ``first-proxy`` command line, in process with CliRunner and once as a real server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from click.testing import CliRunner, Result

from first_proxy.cli import cli
from first_proxy.plugins import BUILTIN_PLUGINS
from first_proxy.store.schema import COLUMNS
from first_proxy.testing import TEST_KEY, ReferenceBackend, ReferenceUpstream

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


GOOD = {
    "store": "sqlite:///gateway.db",
    "auth": {"api_keys": [{"name": "alice", "sha256": "a" * 64, "groups": ["staff"]}]},
    "models": {"m": {"targets": [
        {"name": "local", "backend": "openai", "url": "http://127.0.0.1:9/v1"}]}},
}


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_answers_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: cli {command}" in result.output or f"Usage: first-proxy {command}" in (
        result.output)


def test_top_level_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("serve", "check", "plugins", "hash-key", "requests"):
        assert command in result.output


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gateway.yaml", GOOD)
    result = run_cli("check", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "OK: 1 model(s), 1 target(s), 1 API key(s); backends: openai; store: sqlite" in (
        result.output)


def test_check_accepts_the_example_file() -> None:
    result = run_cli("check", "--config", str(REPO / "gateway.yaml"))
    assert result.exit_code == 0, result.output


def test_check_lists_every_problem_with_its_key_path(tmp_path: Path) -> None:
    bad = {
        "server": {"port": "eighty", "colour": "blue"},
        "models": {"m": {"targets": [{"name": "x", "backend": "openai", "url": "ftp://x"}]}},
    }
    path = write_config(tmp_path / "gateway.yaml", bad)
    result = run_cli("check", "--config", str(path))
    assert result.exit_code == 1
    assert "3 problem(s)" in result.output
    assert "server.port: expected an integer" in result.output
    assert "server.colour: unknown key" in result.output
    assert "models.m.targets[0].url: expected an http:// or https:// URL" in result.output
    assert "Traceback" not in result.output


def test_check_reports_an_unknown_backend(tmp_path: Path) -> None:
    config = {**GOOD, "models": {"m": {"targets": [{"name": "x", "backend": "carrier-pigeon"}]}}}
    path = write_config(tmp_path / "gateway.yaml", config)
    result = run_cli("check", "--config", str(path))
    assert result.exit_code == 1
    assert "models.m.targets[0].backend: no installed plugin dispatches backend 'carrier-pigeon'" \
        in result.output


#: The file of the report: a typo'd key, a URL without a scheme and an unknown backend.
THREE_PROBLEMS = """\
server: {host: 127.0.0.1, prot: 8080}
models:
  llama:
    targets:
      - {name: local, backend: openai, url: localhost:8000/v1}
      - {name: cluster, backend: slurm-magic, url: http://gpu-node:8000/v1}
"""
THREE_PROBLEM_LINES = [
    "  server.prot: unknown key; expected one of: access_log, body_timeout, expose_target, "
    "host, idle_timeout, max_body_bytes, port, server_header, shutdown_grace",
    "  models.llama.targets[0].url: expected an http:// or https:// URL, got 'localhost:8000/v1'",
    "  models.llama.targets[1].backend: no installed plugin dispatches backend 'slurm-magic' "
    "(installed backends: ",
]


def assert_three_problems(output: str, path: Path) -> None:
    """``output`` reports the three problems of THREE_PROBLEMS, once each, in file order."""
    lines = output.splitlines()
    start = lines.index(f"Error: {path}: 3 problem(s)")
    reported = lines[start + 1 : start + 4]
    assert [line[: len(expected)] for line, expected in zip(reported, THREE_PROBLEM_LINES)] == (
        THREE_PROBLEM_LINES), output
    assert len(lines) == start + 4, output
    assert "Traceback" not in output


def test_check_reports_every_problem_of_a_file_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(THREE_PROBLEMS)
    result = run_cli("check", "--config", str(path))
    assert result.exit_code == 1
    assert_three_problems(result.output, path)


def test_check_on_a_missing_file(tmp_path: Path) -> None:
    result = run_cli("check", "--config", str(tmp_path / "nowhere.yaml"))
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_plugins_table_json_and_all(tmp_path: Path) -> None:
    no_config = str(tmp_path / "absent.yaml")
    table = run_cli("plugins", "--config", no_config)
    assert table.exit_code == 0
    assert table.output.splitlines()[0].split() == ["plugin", "version", "hooks"]
    assert "first_openai_direct" in table.output
    assert "first_proxy.builtin" not in table.output

    rows = json.loads(run_cli("plugins", "--json", "--config", no_config).output)
    direct = next(r for r in rows if r["name"] == "first_openai_direct")
    assert direct["builtin"] is False
    assert direct["version"]
    assert {"register_backends"} <= set(direct["hooks"])
    assert not any(r["builtin"] for r in rows)

    every = json.loads(run_cli("plugins", "--json", "--all", "--config", no_config).output)
    builtins = {r["name"] for r in every if r["builtin"]}
    assert builtins == set(BUILTIN_PLUGINS)
    assert "first_openai_direct" in {r["name"] for r in every}
    assert "first_proxy.builtin.api_keys" in run_cli("plugins", "--all", "--config",
                                                     no_config).output


def test_plugins_leaves_out_what_gateway_yaml_disables(tmp_path: Path) -> None:
    config = {"plugins": {"first_openai_direct": {"enabled": False}}}
    path = write_config(tmp_path / "gateway.yaml", config)
    rows = json.loads(run_cli("plugins", "--json", "--config", str(path)).output)
    assert "first_openai_direct" not in {r["name"] for r in rows}


def test_hash_key_from_argument_and_stdin() -> None:
    expected = hashlib.sha256(b"sk-some-long-key").hexdigest()
    by_argument = run_cli("hash-key", "sk-some-long-key")
    assert by_argument.exit_code == 0
    assert by_argument.output.strip() == expected
    by_stdin = run_cli("hash-key", input="sk-some-long-key\n")
    assert by_stdin.exit_code == 0
    assert by_stdin.output.strip() == expected
    too_short = run_cli("hash-key", "short")
    assert too_short.exit_code == 1
    assert "at least 8 characters" in too_short.output


async def test_requests_reads_what_a_gateway_wrote(
    make_gateway: Any, reference_upstream: ReferenceUpstream, store_url: str, tmp_path: Path
) -> None:
    models = {"m": {"targets": [{"name": "a", "backend": "reference",
                                 "url": reference_upstream.url, "model": "reference-model"}]}}
    config = write_config(tmp_path / "gateway.yaml", {"store": store_url, "models": models})
    empty = await asyncio.to_thread(run_cli, "requests", "--config", str(config))
    assert empty.exit_code == 0, empty.output
    assert "No requests logged yet." in empty.output

    server = await make_gateway({"store": store_url, "models": models},
                                plugins=[ReferenceBackend()])
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    for words in ("one", "one two"):
        await asyncio.to_thread(client.chat.completions.create, model="m",
                                messages=[{"role": "user", "content": words}])
    await server.close()

    result = await asyncio.to_thread(run_cli, "requests", "--config", str(config))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["request_id", "time", "user", "model", "target", "status",
                                "error", "ms", "ttft", "tokens", "in/out"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 2
    assert all(row[3:8] == ["key:tester", "m", "a", "200", "-"] for row in rows)
    # Newest first: the second request had two completion tokens.
    assert rows[0][-1].endswith("/2") and rows[1][-1].endswith("/1")

    one = await asyncio.to_thread(run_cli, "requests", "-n", "1", "--config", str(config))
    assert len(one.output.splitlines()) == 3


async def test_requests_finds_what_a_user_reports(
    make_gateway: Any, reference_upstream: ReferenceUpstream, store_url: str, tmp_path: Path
) -> None:
    models = {
        "m": {"targets": [{"name": "a", "backend": "reference", "url": reference_upstream.url,
                           "model": "reference-model"}]},
        "down": {"targets": [{"name": "gone", "backend": "reference",
                              "url": f"http://127.0.0.1:{free_port()}/v1"}]},
    }
    config = write_config(tmp_path / "gateway.yaml", {"store": store_url, "models": models})
    server = await make_gateway({"store": store_url, "models": models},
                                plugins=[ReferenceBackend()])
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    hello = [{"role": "user", "content": "hello"}]
    answered = await asyncio.to_thread(client.chat.completions.with_raw_response.create,
                                       model="m", messages=hello)
    reported = answered.headers["X-Request-Id"]
    with pytest.raises(openai.APIStatusError) as down:
        await asyncio.to_thread(client.chat.completions.create, model="down", messages=hello)
    with pytest.raises(openai.NotFoundError):
        await asyncio.to_thread(client.chat.completions.create, model="nope", messages=hello)
    await server.close()

    async def requests(*args: str) -> Result:
        return await asyncio.to_thread(run_cli, "requests", "--config", str(config), *args)

    by_id = await requests("--id", reported)
    assert by_id.exit_code == 0, by_id.output
    [row] = [line.split() for line in by_id.output.splitlines()[2:]]
    assert row[0] == reported and row[3:8] == ["key:tester", "m", "a", "200", "-"]

    absent = await requests("--id", "req-that-never-was")
    assert absent.exit_code == 1
    assert "no request with id 'req-that-never-was' in the request log" in absent.output

    failed = await requests("--status", "5xx", "--json")
    assert failed.exit_code == 0, failed.output
    [line] = failed.output.splitlines()
    row = json.loads(line)
    assert (row["model"], row["target"], row["status"], row["request_id"]) == (
        "down", "gone", down.value.status_code, down.value.response.headers["X-Request-Id"])
    assert row["error"] and set(row) == set(COLUMNS)

    async def found(*args: str) -> list[int]:
        result = await requests("--json", *args)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["status"] for line in result.output.splitlines()]

    failed = down.value.status_code
    assert await found("--status", "404") == [404]
    assert await found("--status", "4XX", "--user", "key:tester") == [404]
    assert await found("--model", "m", "--status", "200") == [200]
    assert await found("--model", "down") == [failed]
    assert await found("--user", "key:someone-else") == []
    assert await found("--since", "1h") == [404, failed, 200]
    assert await found("--since", "2999-01-01T00:00") == []
    assert await found("--id", reported, "--since", "10m") == [200]
    assert (await requests("--since", "2999-01-01")).output == "No requests match the filters.\n"

    refused = await requests("--id", reported, "--status", "500")
    assert refused.exit_code == 1
    assert "that matches the filters" in refused.output
    for bad in (["--status", "abc"], ["--status", "600"], ["--since", "yesterday"]):
        result = await requests(*bad)
        assert result.exit_code == 2
        assert "Invalid value for" in result.output and repr(bad[1]) in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_proxy_command() -> list[str]:
    script = shutil.which("first-proxy", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from first_proxy.cli import main; main()"]


def output_of(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_for_health(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                pytest.fail(f"first-proxy serve exited with {process.returncode}:\n"
                            f"{output_of(log)}")
            try:
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"first-proxy serve did not answer /health:\n{output_of(log)}")
            await asyncio.sleep(0.1)


async def test_serve_demo_answers_the_openai_sdk_and_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    shutil.copy(REPO / "gateway.yaml", config)
    port = free_port()
    env = {**os.environ, "FIRST_PROXY_API_KEY": "sk-cli-test-key-42"}
    env.pop("FIRST_PROXY_CONFIG", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *first_proxy_command(), "serve", "--demo", "--port", str(port),
            "--config", str(config), cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_for_health(url, process, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-cli-test-key-42", max_retries=0)
        answer = await asyncio.to_thread(
            client.chat.completions.create, model="demo-model",
            messages=[{"role": "user", "content": "hello from the command line"}])
        assert answer.choices[0].message.content == "hello from the command line"
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(
                openai.OpenAI(base_url=f"{url}/v1", api_key="demo-key-change-me",
                              max_retries=0).models.list)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
        assert code == 0, output_of(log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (tmp_path / "first-proxy.db").exists()

    listing = await asyncio.create_subprocess_exec(
        *first_proxy_command(), "requests", "--config", str(config), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = (await listing.communicate())[0].decode()
    assert listing.returncode == 0, output
    rows = [line.split() for line in output.splitlines()[2:]]
    assert [row[3:7] for row in rows] == [["key:demo", "demo-model", "demo", "200"]], output


# -- start-up errors of the real `first-proxy serve`: one line each ---------------------------


async def serve_until_it_exits(tmp_path: Path, config: Path, *args: str,
                               env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``first-proxy serve`` on ``config``; its exit code and output once it gave up."""
    log = tmp_path / "serve.log"
    environ = {**os.environ, **(env or {})}
    environ.pop("FIRST_PROXY_CONFIG", None)
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *first_proxy_command(), "serve", "--config", str(config), *args,
            cwd=tmp_path, env=environ, stdout=out, stderr=out)
    try:
        async with asyncio.timeout(60):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, output_of(log)


def error_line(output: str) -> str:
    """The one line of ``output`` that reports the error; no traceback anywhere."""
    assert "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("Error: ")]
    return line


def minimal_config(tmp_path: Path, store: str) -> Path:
    return write_config(tmp_path / "gateway.yaml", {"store": store, "status": {"interval": 3600},
                                                    "auth": GOOD["auth"]})


async def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    config = minimal_config(tmp_path, f"sqlite:///{tmp_path}/g.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await serve_until_it_exits(tmp_path, config, "--port", str(port))
    assert code == 1, output
    line = error_line(output)
    assert f"127.0.0.1:{port} is already in use" in line
    assert "--port" in line and "stop the other process" in line


async def test_serve_with_an_unreachable_postgres_says_so_in_one_line(tmp_path: Path) -> None:
    closed = free_port()
    config = minimal_config(tmp_path, f"postgresql://postgres:pw-not-shown@127.0.0.1:{closed}/db")
    code, output = await serve_until_it_exits(tmp_path, config, "--port", str(free_port()))
    assert code == 1, output
    line = error_line(output)
    assert f"cannot open the store postgresql://postgres@127.0.0.1:{closed}/db: " in line
    assert "ConnectionRefusedError" in line and "PostgreSQL" in line
    assert "pw-not-shown" not in output


async def test_serve_with_an_unwritable_sqlite_path_says_so_in_one_line(tmp_path: Path) -> None:
    # A file where the database's directory should be: no user, root included, can write there.
    (tmp_path / "not-a-directory").write_text("")
    path = tmp_path / "not-a-directory" / "log.db"
    code, output = await serve_until_it_exits(
        tmp_path, minimal_config(tmp_path, f"sqlite:///{path}"), "--port", str(free_port()))
    assert code == 1, output
    line = error_line(output)
    assert f"cannot open the store {path}: " in line and "store: in gateway.yaml" in line


LICENCE_CHECK = '''\
"""A plugin whose start-up fails: it must reach a licence server that is not there."""

import asyncio
import contextlib

from first_proxy import hookimpl


@hookimpl
@contextlib.asynccontextmanager
async def lifespan(gateway):
    port = gateway.plugin_config("licence_check")["port"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    yield
'''


def install_licence_check(site: Path) -> dict[str, str]:
    """Install the plugin ``licence_check`` into ``site``; the environment that finds it."""
    site.mkdir()
    (site / "licence_check.py").write_text(LICENCE_CHECK)
    info = site / "licence_check-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: licence-check\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[first_proxy]\nlicence_check = licence_check\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                        os.environ.get("PYTHONPATH")]))}


async def test_serve_with_a_plugin_that_cannot_start_names_it_in_one_line(
    tmp_path: Path,
) -> None:
    env = install_licence_check(tmp_path / "site")
    closed = free_port()
    config = write_config(tmp_path / "gateway.yaml", {
        "store": f"sqlite:///{tmp_path}/g.db", "plugins": {"licence_check": {"port": closed}}})
    code, output = await serve_until_it_exits(tmp_path, config, "--port", str(free_port()),
                                              env=env)
    assert code == 1, output
    line = error_line(output)
    assert line.startswith("Error: plugin licence_check could not start: ConnectionRefusedError")
    assert line.endswith("(--log-level debug shows the traceback)")

    code, output = await serve_until_it_exits(tmp_path, config, "--port", str(free_port()),
                                              "--log-level", "debug", env=env)
    assert code == 1, output
    assert "Traceback (most recent call last)" in output
    assert "asyncio.open_connection" in output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert errors == [line.removesuffix(" (--log-level debug shows the traceback)")]


async def test_serve_reports_every_problem_of_a_file_at_once(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(THREE_PROBLEMS)
    code, output = await serve_until_it_exits(tmp_path, config)
    assert code == 1, output
    assert_three_problems(output, config)
