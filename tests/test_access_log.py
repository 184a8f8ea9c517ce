"""The access log: a line per request, written in batches, with no credential in it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from first_proxy import accesslog
from first_proxy.accesslog import ACCESS_LOGGER
from first_proxy.testing import (
    TEST_KEY,
    GatewayServer,
    ReferenceBackend,
    ReferenceUpstream,
    eventually,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (?P<method>[A-Z]+) (?P<path>\S+) "
    r"(?P<status>\d{3}) (?P<ms>\d+\.\d)ms user=(?P<user>\S+) model=(?P<model>\S+) "
    r"target=(?P<target>\S+) id=(?P<id>\S+) tokens=(?P<tokens>\S+)(?: error=(?P<error>\S+))?$")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """Every access-log line captured, parsed; fails on a line of another shape."""
    lines = [line for record in caplog.records if record.name == ACCESS_LOGGER
             for line in record.getMessage().splitlines()]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [m.groupdict() for m in parsed if m]


async def start(make_gateway: Any, upstream: ReferenceUpstream, **server: Any) -> GatewayServer:
    return await make_gateway({"server": server, "models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": upstream.url}]}}},
        plugins=[ReferenceBackend()])


async def test_a_line_per_request_every_route_written_at_shutdown(
        make_gateway: Any, reference_upstream: ReferenceUpstream,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    monkeypatch.setattr(accesslog, "WRITE_DELAY", 3600)  # nothing is written before shutdown
    server = await start(make_gateway, reference_upstream)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    answer = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}])
    stream = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "four five"}], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream.parse()])
    async with aiohttp.ClientSession() as http:
        for method, path, headers in [("GET", "/v1/models", AUTH), ("GET", "/v1/models", {}),
                                      ("GET", "/health", {}), ("GET", "/nowhere?key=secret", {}),
                                      ("DELETE", "/health", {})]:
            async with http.request(method, server.url + path, headers=headers):
                pass
    assert access_lines(caplog) == []
    assert server.gateway.access_log is not None and server.gateway.access_log.pending == 7
    await server.close()

    lines = access_lines(caplog)
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/v1/chat/completions", "200"), ("POST", "/v1/chat/completions", "200"),
        ("GET", "/v1/models", "200"), ("GET", "/v1/models", "401"), ("GET", "/health", "200"),
        ("GET", "/nowhere", "404"), ("DELETE", "/health", "405")]
    chat, streamed = lines[0], lines[1]
    assert chat["id"] == answer.headers["X-Request-Id"]
    assert streamed["id"] == stream.headers["X-Request-Id"]
    for line in (chat, streamed):
        assert (line["user"], line["model"], line["target"]) == ("key:tester", MODEL, "a")
        assert re.fullmatch(r"\d+/\d+", line["tokens"]) and line["error"] is None
    assert lines[3]["error"] == "missing_credentials"
    assert TEST_KEY not in caplog.text and "secret" not in caplog.text


async def test_lines_are_written_while_the_gateway_serves(
        make_gateway: Any, reference_upstream: ReferenceUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    server = await start(make_gateway, reference_upstream)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{server.url}/health") as response:
                assert response.status == 200
    await eventually(lambda: len(access_lines(caplog)) == 3)
    assert [line["path"] for line in access_lines(caplog)] == ["/health"] * 3
    assert server.gateway.access_log is not None and server.gateway.access_log.pending == 0


@pytest.mark.parametrize("level, setting", [(logging.INFO, False), (logging.WARNING, True)])
async def test_no_access_log_when_turned_off_or_below_the_log_level(
        make_gateway: Any, reference_upstream: ReferenceUpstream,
        caplog: pytest.LogCaptureFixture, level: int, setting: bool) -> None:
    caplog.set_level(level, logger=ACCESS_LOGGER)
    server = await start(make_gateway, reference_upstream, access_log=setting)
    assert server.gateway.access_log is None
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as response:
        assert response.status == 200
    await server.close()
    assert access_lines(caplog) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_writes_its_own_lines_and_not_aiohttps(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    shutil.copy(REPO / "gateway.yaml", config)
    key = "sk-access-log-test-key-7"
    env = {**os.environ, "FIRST_PROXY_API_KEY": key}
    env.pop("FIRST_PROXY_CONFIG", None)
    port = free_port()
    beside = Path(sys.executable).parent / "first-proxy"
    command = [str(beside)] if beside.exists() else [
        sys.executable, "-c", "from first_proxy.cli import main; main()"]
    process = await asyncio.create_subprocess_exec(
        *command, "serve", "--demo", "--port", str(port), "--config", str(config),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):  # start-up prints the base URL when it is serving
            while b"OpenAI base URL" not in await process.stdout.readline():
                assert process.returncode is None
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                    max_retries=0)
        answer = await client.chat.completions.with_raw_response.create(
            model="demo-model", messages=[{"role": "user", "content": "hello"}])
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                     api_key="sk-not-a-key-at-all", max_retries=0).models.list()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, errors = await process.communicate()
        assert process.returncode == 0, errors.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = errors.decode()
    lines = [LINE.match(line) for line in output.splitlines()]
    parsed = [m.groupdict() for m in lines if m]
    assert [(p["method"], p["path"], p["status"], p["user"]) for p in parsed] == [
        ("POST", "/v1/chat/completions", "200", "key:demo"),
        ("GET", "/v1/models", "401", "-")]
    assert parsed[0]["id"] == answer.headers["X-Request-Id"]
    assert key not in output and "sk-not-a-key-at-all" not in output
    assert "HTTP/1.1" not in output  # aiohttp's access log is off
