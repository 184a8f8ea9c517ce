"""A plugin's lifespan that runs a real child process leaves none behind, however the gateway
stops: normally, when a later plugin cannot start, when another cannot stop, and on SIGTERM.

The plugin is tests/plugins/first-test-lifespan, loaded through its entry point as if pip had
installed it: its directory and a ``.dist-info`` made from its pyproject.toml are put on the
path, in process and for a ``first-proxy serve`` subprocess alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from first_proxy import hookimpl
from first_proxy.errors import StartupError
from first_proxy.testing import TEST_KEY, MakeGateway, eventually

PLUGIN = Path(__file__).parent / "plugins" / "first-test-lifespan"
NAME = "first_test_lifespan"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def install(site: Path) -> list[str]:
    """Install the plugin into ``site`` as pip would list it; the path entries that find it."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    points = project["entry-points"]["first_proxy"]
    (info / "entry_points.txt").write_text(
        "[first_proxy]\n" + "".join(f"{name} = {value}\n" for name, value in points.items()))
    return [str(site), str(PLUGIN)]


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin installed for this test's gateways (``load_entrypoints=True``)."""
    for entry in reversed(install(tmp_path / "site")):
        monkeypatch.syspath_prepend(entry)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def child_of(pid_file: Path) -> Iterator[list[int]]:
    """The pid the plugin wrote, once the block is over; the child is killed if a test left
    it running, so that a failing test leaves nothing behind either."""
    found: list[int] = []
    try:
        yield found
    finally:
        if pid_file.exists():
            found.append(int(pid_file.read_text()))
            if alive(found[0]):
                os.kill(found[0], signal.SIGKILL)


def settings(tmp_path: Path) -> dict[str, Any]:
    return {"plugins": {NAME: {"pid_file": str(tmp_path / "child.pid")}}}


@pytest.mark.usefixtures("installed")
async def test_a_normal_start_and_stop(make_gateway: MakeGateway, tmp_path: Path) -> None:
    with child_of(tmp_path / "child.pid") as pid:
        server = await make_gateway(settings(tmp_path), load_entrypoints=True)
        running = int((tmp_path / "child.pid").read_text())
        assert alive(running)
        await server.close()
    assert pid == [running] and not alive(running)


class CannotStart:
    __name__ = "first_cannot_start"

    @hookimpl(trylast=True)  # after first_test_lifespan's
    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        raise ConnectionRefusedError("the licence server refused")
        yield


@pytest.mark.usefixtures("installed")
async def test_a_later_plugin_that_cannot_start(make_gateway: MakeGateway, tmp_path: Path) -> None:
    with child_of(tmp_path / "child.pid") as pid, pytest.raises(
            StartupError, match="plugin first_cannot_start could not start"):
        await make_gateway(settings(tmp_path), plugins=[CannotStart()], load_entrypoints=True)
    assert len(pid) == 1, "the child never started"
    assert not alive(pid[0])


class CannotStop:
    __name__ = "first_cannot_stop"

    @hookimpl(trylast=True)  # started after first_test_lifespan's, so stopped before it
    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield
        raise RuntimeError("the scheduler would not let go")


@pytest.mark.usefixtures("installed")
async def test_another_plugin_that_cannot_stop(make_gateway: MakeGateway, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with child_of(tmp_path / "child.pid") as pid:
        server = await make_gateway(settings(tmp_path), plugins=[CannotStop()],
                                    load_entrypoints=True)
        await server.close()
    assert "plugin first_cannot_stop failed to stop cleanly" in caplog.text
    assert len(pid) == 1 and not alive(pid[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_gateway_stopped_by_sigterm_while_serving(tmp_path: Path) -> None:
    path = install(tmp_path / "site")
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        **settings(tmp_path), "store": f"sqlite:///{tmp_path}/g.db",
        "server": {"shutdown_grace": 10},
        "auth": {"api_keys": [{"name": "tester", "key": TEST_KEY}]},
        "models": {"parrot": {"targets": [{"name": "slow", "backend": "echo", "pace": 0.1}]}}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*path, *filter(None, [os.environ.get("PYTHONPATH")])])}
    # Output to a file, not a pipe: a child left running would hold a pipe open.
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from first_proxy.cli import main; main()", "serve",
            "--config", str(config), "--port", str(port), cwd=tmp_path, env=env, stdout=out,
            stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    with child_of(tmp_path / "child.pid") as pid:
        try:
            async with aiohttp.ClientSession() as http:
                await eventually(lambda: _answers(http, f"{url}/health"), within=30)
                assert alive(int((tmp_path / "child.pid").read_text()))
                async with http.post(f"{url}/v1/completions", headers=AUTH, json={
                        "model": "parrot", "prompt": "one two three four five six",
                        "stream": True}) as response:
                    assert (await response.content.readline()).startswith(b"data: ")
                    gateway.send_signal(signal.SIGTERM)
                    rest = await response.content.read()
            # The stream in flight was let finish; then the plugin stopped its child.
            assert rest.endswith(b"data: [DONE]\n\n")
            async with asyncio.timeout(60):
                await gateway.wait()
            output = log.read_text()
            assert gateway.returncode == 0, output
        finally:
            if gateway.returncode is None:
                gateway.kill()
                await gateway.wait()
    assert f"child process {pid[0]} stopped" in output
    assert not alive(pid[0])


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False
