"""Every typed key of the application and of its requests."""

from __future__ import annotations

from aiohttp import web

from .gateway import Gateway

__all__ = ["GATEWAY", "REQUEST_ID"]

GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = web.RequestKey("request_id", str)
