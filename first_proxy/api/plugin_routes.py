"""Routes plugins add (``register_routes``): the core's request id, error shape, metrics and,
unless the route says otherwise, authentication around each plugin's handler."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import ProxyError
from ..hooks import RouteSpec
from ..keys import GATEWAY, IDENTITY
from .errors import answers_errors
from .incoming import authenticate

__all__ = ["plugin_handler"]


def plugin_handler(spec: RouteSpec) -> Handler:
    """``spec``'s handler as the core serves it."""
    label = f"{spec.method} {spec.path}"

    async def serve(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        started = time.perf_counter()
        status = 500
        try:
            if spec.auth:
                request[IDENTITY] = await authenticate(request, gateway,
                                                       x_api_key=spec.x_api_key)
            response = await spec.handler(request)
            status = response.status
            return response
        except ProxyError as e:
            status = e.status
            raise
        finally:
            gateway.metrics.route_served(spec.plugin, label, status, time.perf_counter() - started)

    return answers_errors(serve, spec.errors)
