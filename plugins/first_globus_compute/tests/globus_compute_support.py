"""What the Globus Compute tests share besides fixtures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
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


class CallbackRelay:
    """The streams' callback route on an aiohttp app of its own, until the core mounts the
    routes plugins declare: point ``callback_url`` here, then attach the gateway."""

    def __init__(self) -> None:
        self.url = ""
        self.posts = 0
        self._handler: Any = None
        self._runner: web.AppRunner | None = None

    def attach(self, plugin: GlobusComputePlugin, server: GatewayServer) -> None:
        self._handler = plugin.backend.callback(server.gateway)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.posts += 1
        return await self._handler(request)

    async def __aenter__(self) -> CallbackRelay:
        app = web.Application()
        app.router.add_post(CALLBACK_ROUTE, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@dataclass
class Site:
    """A gateway with one Globus Compute endpoint, the inference function registered there,
    and the reference upstream standing in for vLLM on the compute node."""

    service: FakeComputeService
    upstream: ReferenceUpstream
    relay: CallbackRelay
    make_gateway: MakeGateway
    endpoint: str
    function: str
    plugins: list[Any] = field(default_factory=list)

    def target(self, name: str = "polaris", **keys: Any) -> dict[str, Any]:
        return {"name": name, "backend": "globus_compute", "endpoint": self.endpoint,
                "function": self.function, "api_port": port_of(self.upstream), **keys}

    async def gateway(self, *targets: dict[str, Any], callback_url: str | None = "relay",
                      model: str = MODEL, plugins: tuple[Any, ...] = (),
                      **config: Any) -> GatewayServer:
        """A started gateway serving ``model`` on ``targets`` (one Compute target by default)."""
        settings: dict[str, Any] = {"client_id": "service-account", "client_secret": "secret"}
        if callback_url is not None:
            settings["callback_url"] = self.relay.url if callback_url == "relay" else callback_url
        plugin = GlobusComputePlugin(make_client=self.service.client)
        server = await self.make_gateway({
            "plugins": {NAME: settings},
            "models": {model: {"targets": list(targets) or [self.target()]}}, **config},
            plugins=[plugin, *plugins])
        if callback_url == "relay":
            self.relay.attach(plugin, server)
        self.plugins.append(plugin)
        return server
