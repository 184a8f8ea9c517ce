"""The aiohttp application factory: wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pluggy
from aiohttp import web

from .api import setup_routes
from .config import GatewayConfig
from .gateway import Gateway
from .keys import GATEWAY
from .plugins import get_plugin_manager

__all__ = ["create_app"]


def create_app(
    config: GatewayConfig,
    *,
    pm: pluggy.PluginManager | None = None,
    load_entrypoints: bool = True,
    plugins: Iterable[Any] = (),
) -> web.Application:
    """An application serving ``config``; ``plugins`` are registered on top of entry points."""
    if pm is None:
        pm = get_plugin_manager(load_entrypoints=load_entrypoints,
                                blocked=config.disabled_plugins, plugins=plugins)
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[GATEWAY] = Gateway(config, pm)
    setup_routes(app)
    app.cleanup_ctx.append(_gateway_context)
    app.on_shutdown.append(_begin_shutdown)
    return app


async def _begin_shutdown(app: web.Application) -> None:
    app[GATEWAY].begin_shutdown()


async def _gateway_context(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.start()
    try:
        yield
    finally:
        await gateway.stop()

