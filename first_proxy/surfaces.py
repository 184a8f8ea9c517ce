"""How each API surface shapes its errors: OpenAI's everywhere, Anthropic's on its routes.

A route names its surface; the same :class:`~first_proxy.errors.ProxyError` then becomes that
API's JSON error body, and that API's SSE error event when a stream has begun.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from .errors import ProxyError

__all__ = ["ANTHROPIC", "OPENAI", "Surface"]


@dataclass(frozen=True, slots=True)
class Surface:
    """An API's error shape: its JSON body, and its SSE error event."""

    name: str
    body: Callable[[ProxyError], bytes]
    event: Callable[[ProxyError], bytes]

    def response(self, error: ProxyError, request_id: str, server: str = "") -> web.Response:
        """``error`` as the answer to the request ``request_id``, naming the gateway as
        ``server`` (``server.server_header``) when given."""
        headers = {**error.headers, "X-Request-Id": request_id}
        if server:
            headers["Server"] = server
        response = web.Response(body=self.body(error), status=error.status,
                                content_type="application/json", headers=headers)
        if error.close_connection:
            response.force_close()
        return response


def _openai_event(error: ProxyError) -> bytes:
    # The OpenAI SDK raises an APIError for a data event that carries an error object.
    return b"data: " + error.body() + b"\n\n"


#: Anthropic's error types, by status (its API documents these names).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def _anthropic_body(error: ProxyError) -> bytes:
    type_ = _ANTHROPIC_TYPES.get(error.status, "api_error" if error.status >= 500 else
                                 "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": error.message}})


def _anthropic_event(error: ProxyError) -> bytes:
    return b"event: error\ndata: " + _anthropic_body(error) + b"\n\n"


OPENAI = Surface("openai", ProxyError.body, _openai_event)
ANTHROPIC = Surface("anthropic", _anthropic_body, _anthropic_event)
