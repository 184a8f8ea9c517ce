"""Every typed key of the application and of its requests."""

from __future__ import annotations

from aiohttp import web

from .gateway import Gateway

__all__ = ["GATEWAY"]

GATEWAY = web.AppKey("gateway", Gateway)
