"""What the Globus Compute tests share besides fixtures."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from first_globus_compute.executors import serializer
from first_globus_compute.plugin import GlobusComputePlugin
from first_globus_compute.settings import NAME
from first_globus_compute.streams import CALLBACK_ROUTE

from first_proxy.testing import GatewayServer, MakeGateway, ReferenceUpstream
from first_proxy.testing.globus_compute import FakeComputeService

MODEL = "reference-model"  # what ReferenceUpstream serves
JSON_RESULTS = ["globus_compute_sdk.serialize.JSONData"]


def port_of(upstream: ReferenceUpstream) -> int:
    return int(upstream.url.rsplit(":", 1)[1].split("/")[0])


async def register(service: FakeComputeService, function: Any) -> str:
    """Register ``function`` with the fake service through the real SDK, as a site would."""
    client = await asyncio.to_thread(service.client,
                                     code_serialization_strategy=serializer().code_serializer)
    return await asyncio.to_thread(client.register_function, function)


def free_port() -> int:
    """A port nothing listens on now: a gateway that must know its own URL before it starts
    (its callback URL) is started on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def callback_posts(server: GatewayServer) -> int:
    """How many posts of streams the gateway's callback route has taken (its route metric)."""
    return int(sum(
        sample.value for family in server.gateway.metrics.route_requests.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["route"] == f"POST {CALLBACK_ROUTE}"))


@dataclass
class Site:
    """A gateway with one Globus Compute endpoint, the inference function registered there,
    and the reference upstream standing in for vLLM on the compute node."""

    service: FakeComputeService
    upstream: ReferenceUpstream
    make_gateway: MakeGateway
    endpoint: str
    function: str
    plugins: list[Any] = field(default_factory=list)

    def target(self, name: str = "polaris", **keys: Any) -> dict[str, Any]:
        return {"name": name, "backend": "globus_compute", "endpoint": self.endpoint,
                "function": self.function, "api_port": port_of(self.upstream), **keys}

    async def gateway(self, *targets: dict[str, Any], callback_url: str | None = "self",
                      model: str = MODEL, plugins: tuple[Any, ...] = (),
                      **config: Any) -> GatewayServer:
        """A started gateway serving ``model`` on ``targets`` (one Compute target by default),
        whose streams are posted back to its own callback route unless ``callback_url``
        says otherwise."""
        settings: dict[str, Any] = {"client_id": "service-account", "client_secret": "secret"}
        port = free_port() if callback_url == "self" else 0
        if callback_url is not None:
            settings["callback_url"] = (f"http://127.0.0.1:{port}" if callback_url == "self"
                                        else callback_url)
        plugin = GlobusComputePlugin(make_client=self.service.client)
        server = await self.make_gateway({
            "plugins": {NAME: settings},
            "models": {model: {"targets": list(targets) or [self.target()]}}, **config},
            plugins=[plugin, *plugins], port=port)
        self.plugins.append(plugin)
        return server
