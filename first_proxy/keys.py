"""Every typed key of the application and of its requests."""

from __future__ import annotations

from aiohttp import web

from .gateway import Gateway
from .types import Identity

__all__ = ["GATEWAY", "IDENTITY"]

GATEWAY = web.AppKey("gateway", Gateway)
#: The caller, once authenticated (by a route's ``Expect: 100-continue`` check, say).
IDENTITY = web.RequestKey("identity", Identity)
