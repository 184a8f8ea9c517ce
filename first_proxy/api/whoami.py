"""GET /resource_server/whoami: who the gateway takes the caller to be. Never their token."""

from __future__ import annotations

from aiohttp import web

from ..keys import GATEWAY
from .incoming import authenticate

__all__ = ["whoami"]


async def whoami(request: web.Request) -> web.Response:
    """The caller's id, name, username, groups, identity provider and how they authenticated
    (``api_key``, ``globus``, ...: what the plugin that identified them says)."""
    gateway = request.app[GATEWAY]
    identity = await authenticate(request, gateway)
    extra = identity.extra
    return web.json_response({
        "id": identity.user_id,
        "name": extra.get("name") or identity.name,
        "username": identity.username or None,
        "email": extra.get("email"),
        "groups": sorted(identity.groups),
        "identity_provider": identity.idp or None,
        "authenticated_with": extra.get("auth"),
    })
