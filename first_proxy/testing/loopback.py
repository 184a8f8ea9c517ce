"""Serving an aiohttp application on loopback: what every server in this kit does."""

from __future__ import annotations

from aiohttp import web

__all__ = ["serve_on_loopback"]


async def serve_on_loopback(runner: web.BaseRunner, host: str = "127.0.0.1",
                            port: int = 0) -> str:
    """Set ``runner`` up and serve it on ``host:port`` (0: any free port); returns the base
    URL, ``http://host:port`` with the port bound. ``await runner.cleanup()`` stops it."""
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    return f"http://{bound_host}:{bound_port}"
