"""Turns every error into OpenAI's JSON shape and tags every response with its request id."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import BadRequest, NotFound, ProxyError
from ..keys import GATEWAY, REQUEST_ID

__all__ = ["error_middleware"]

log = logging.getLogger("first_proxy")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _error_response(error: ProxyError) -> web.Response:
    return web.Response(body=error.body(), status=error.status,
                        content_type="application/json", headers=error.headers)


def _from_http_exception(request: web.Request, e: web.HTTPException) -> ProxyError:
    if e.status == 404:
        return NotFound(f"There is no route {request.method} {request.path}. The API lives under "
                        "/v1/ (chat/completions, completions, embeddings, models).",
                        code="unknown_route")
    if e.status == 405:
        error = BadRequest(f"{request.method} is not allowed on {request.path}.",
                           code="method_not_allowed")
        error.status = 405
        error.headers = {"Allow": e.headers.get("Allow", "")}
        return error
    if e.status == 413:
        limit = request.app[GATEWAY].config.server.max_body_bytes
        error = BadRequest(f"The request body is larger than the {limit} bytes this gateway "
                           "accepts. Send less, or ask the administrator to raise "
                           "server.max_body_bytes.", code="request_too_large")
        error.status = 413
        return error
    error = BadRequest(e.text or e.reason, code=e.reason.lower().replace(" ", "_"))
    error.status = e.status
    return error


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ProxyError as e:
        response = _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = _error_response(_from_http_exception(request, e))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                      request_id)
        response = _error_response(ProxyError(
            f"The gateway failed on this request; quote request id {request_id} to your "
            "administrator."))
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response
