"""A gateway on a real loopback port, started from a config mapping, for tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..app import create_app
from ..config import GatewayConfig, parse_config
from ..gateway import Gateway
from ..keys import GATEWAY
from ..server import GatewayRunner
from .loopback import serve_on_loopback
from .waiting import eventually

__all__ = ["GatewayServer"]


class GatewayServer:
    """Runs :func:`first_proxy.app.create_app` as ``first-proxy serve`` would, on 127.0.0.1.

    ``config`` is a gateway.yaml as a mapping (or a parsed :class:`GatewayConfig`). Plugins
    come from ``plugins`` and, when ``load_entrypoints`` is true, from what is installed.
    """

    def __init__(self, config: Mapping[str, Any] | GatewayConfig, *,
                 plugins: Iterable[Any] = (), load_entrypoints: bool = False,
                 environ: Mapping[str, str] | None = None) -> None:
        if not isinstance(config, GatewayConfig):
            config = parse_config(dict(config), source="<test config>", environ=environ)
        self.config = config
        self.app = create_app(config, plugins=plugins, load_entrypoints=load_entrypoints)
        self.url = ""
        self._runner: GatewayRunner | None = None

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    @property
    def base_url(self) -> str:
        """The OpenAI base URL: what ``openai.OpenAI(base_url=...)`` wants."""
        return f"{self.url}/v1"

    async def logged(self, limit: int = 200) -> list[dict[str, Any]]:
        """The request log, newest first, after writing out what is buffered."""
        gateway = self.gateway
        assert gateway.request_log is not None and gateway.store is not None
        await gateway.request_log.flush()
        return await gateway.store.recent_requests(limit)

    async def log_row(self, request_id: str, *, within: float = 10.0) -> dict[str, Any]:
        """The request-log row of ``request_id``, once the request has finished."""

        async def row() -> dict[str, Any] | None:
            return next((r for r in await self.logged() if r["request_id"] == request_id), None)

        return await eventually(row, within=within)

    async def start(self, port: int = 0) -> GatewayServer:
        """Serve on 127.0.0.1:``port`` (0: any free port)."""
        self._runner = GatewayRunner(self.app, access_log=None)
        self.url = await serve_on_loopback(self._runner, port=port)
        return self

    async def close(self) -> None:
        """Stop as on SIGTERM: in-flight requests get the grace period, then all is flushed."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GatewayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
