"""first-globus-compute as a site installs and configures it: the entry point, the start-up
checks of its settings and targets, and ``first-globus-compute register`` followed by a
first request with the lines it prints."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from click.testing import CliRunner
from first_globus_compute.cli import cli
from first_globus_compute.plugin import GlobusComputePlugin
from first_globus_compute.settings import NAME
from globus_compute_support import MODEL, free_port, port_of
from globus_sdk import AccessTokenAuthorizer

from first_proxy.errors import ConfigError
from first_proxy.plugins import get_plugin_manager, list_plugins
from first_proxy.testing import TEST_KEY, MakeGateway, ReferenceUpstream
from first_proxy.testing.globus_compute import SOURCE_SERIALIZERS, FakeComputeService

EXAMPLES = Path(__file__).parent.parent / "examples"
ENDPOINT = "6a1b0c5e-5c22-4d43-9e2b-1f0a7e0d3c11"
FUNCTION = "0f6f3c3e-2d1b-4f6a-8d5e-1c2b3a4d5e6f"


def test_plugin_is_installed() -> None:
    rows = {row["name"]: row for row in list_plugins(get_plugin_manager())}
    assert rows[NAME]["version"] == "0.1.0"
    assert {"check_config", "register_backends", "register_routes"} <= set(rows[NAME]["hooks"])


async def test_target_problems_are_reported_at_start_up(make_gateway: MakeGateway) -> None:
    good = {"backend": "globus_compute", "endpoint": ENDPOINT, "function": FUNCTION,
            "api_port": 8000}
    with pytest.raises(ConfigError) as caught:
        await make_gateway({
            "plugins": {NAME: {"client_id": "id", "client_secret": "secret",
                               "callback_url": "gateway.example.org"}},
            "models": {MODEL: {"targets": [
                {"name": "bare", "backend": "globus_compute"},
                {**good, "name": "typo", "endpiont": ENDPOINT},
                {**good, "name": "shapes", "endpoint": "polaris", "function": 42,
                 "api_port": 70000},
                {**good, "name": "url", "url": "http://127.0.0.1:8000/v1"},
                {**good, "name": "port-from-env", "api_port": "8000"},
            ]}}}, load_entrypoints=True)
    problems = dict(caught.value.problems)
    base = f"models.{MODEL}.targets"
    assert sorted(problems) == sorted([
        f"{base}[0].endpoint", f"{base}[0].function", f"{base}[0].api_port",
        f"{base}[1].endpiont", f"{base}[2].endpoint", f"{base}[2].function",
        f"{base}[2].api_port", f"{base}[3].url", f"plugins.{NAME}.callback_url"])
    assert problems[f"{base}[0].function"].startswith("required for backend globus_compute")
    assert problems[f"{base}[2].endpoint"] == "expected a UUID, got 'polaris'"
    assert "unknown key for backend globus_compute" in problems[f"{base}[1].endpiont"]
    assert "127.0.0.1:<api_port> on the compute node" in problems[f"{base}[3].url"]


async def test_compute_targets_need_the_service_account(make_gateway: MakeGateway) -> None:
    target = {"backend": "globus_compute", "endpoint": ENDPOINT, "function": FUNCTION,
              "api_port": 8000}
    with pytest.raises(ConfigError) as caught:
        await make_gateway({"models": {MODEL: {"targets": [target]}}}, load_entrypoints=True)
    assert [path for path, _ in caught.value.problems] == [
        f"plugins.{NAME}.client_id", f"plugins.{NAME}.client_secret"]


async def test_register_prints_lines_that_serve_the_first_request(
        compute_service: FakeComputeService, make_gateway: MakeGateway,
        monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = compute_service.add_endpoint()
    port = free_port()
    async with ReferenceUpstream() as upstream:
        result = await asyncio.to_thread(
            CliRunner().invoke, cli,
            ["register", "--endpoint", endpoint, "--model", MODEL, "--cluster", "polaris",
             "--api-port", str(port_of(upstream)), "--callback-url", f"http://127.0.0.1:{port}"],
            env={"GLOBUS_COMPUTE_CLIENT_ID": "service-account",
                 "GLOBUS_COMPUTE_CLIENT_SECRET": "its-secret"},
            obj={"make_client": compute_service.client})
        assert result.exit_code == 0, result.output
        pasted: dict[str, Any] = yaml.safe_load(result.output)  # the comments say where
        assert sorted(pasted.pop("allowed_functions")) == sorted(compute_service.functions)
        # What travels is the functions' source text (PureSourceTextInspect: "st").
        assert all(code.split("\n", 2)[1] == "st" for code in compute_service.functions.values())

        monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", "service-account")
        monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "its-secret")
        plugin = GlobusComputePlugin(make_client=compute_service.client)
        server = await make_gateway(pasted, plugins=[plugin], port=port)
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY,
                                      max_retries=0) as api:
            answer = await api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "first light"}])
            stream = await api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "and streamed"}], stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])
    assert answer.choices[0].message.content == "first light"
    assert streamed == "and streamed"


async def test_register_says_when_globus_refuses(compute_service: FakeComputeService) -> None:
    def wrong_token() -> Any:
        return compute_service.client(AccessTokenAuthorizer("not-a-token"))

    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["register", "--client-id", "x", "--client-secret", "y"],
        obj={"make_client": wrong_token})
    assert result.exit_code == 1
    assert "Error: Globus Compute did not register the functions:" in result.output
    assert "401" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["endpoint-pbs.yaml", "endpoint-local.yaml"])
def test_the_example_endpoint_configurations_load(name: str) -> None:
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    # Read by the endpoint software itself; this machine has no bond0, the cluster's network.
    config = load_config_yaml((EXAMPLES / name).read_text().replace("ifname: bond0", "ifname: lo"))
    try:
        allowed = {c.__name__ for c in config.engine.serde.allowed_deserializer_types}
        # What the remote-function tests ran under, so the gateway's tasks are accepted.
        assert allowed == {path.rsplit(".", 1)[1] for path in SOURCE_SERIALIZERS}
        assert len(config.allowed_functions) == 2
    finally:
        config.engine.shutdown()
