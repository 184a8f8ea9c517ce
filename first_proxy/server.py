"""The HTTP server around the application: aiohttp's, with its edges shaped like the API.

A request aiohttp's parser refuses (a broken chunk size, a missing Host, an oversized header)
never reaches a route; aiohttp answers it in plain text, as it does a request whose target is
not a path (``OPTIONS *``, ``CONNECT host:443``), which no route can match.
:class:`GatewayRunner` answers both in OpenAI's error shape instead, and closes connections
that sit idle or half sent.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, InvalidHeader, InvalidURLError, LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from .api.errors import unknown_route
from .api.incoming import request_id
from .errors import ProxyError, error_body
from .keys import GATEWAY
from .surfaces import OPENAI

__all__ = ["GatewayRunner"]

log = logging.getLogger("first_proxy")


class GatewayRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` for a gateway application (``create_app``)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        server = app[GATEWAY].config.server
        kwargs.setdefault("keepalive_timeout", server.idle_timeout)
        kwargs.setdefault("shutdown_timeout", server.shutdown_grace)
        kwargs.setdefault("handler_cancellation", True)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        server.server_header = self.app[GATEWAY].config.server.server_header  # type: ignore[attr-defined]
        server.request_handler = _paths_only(server.request_handler, server.server_header)
        return server


def _paths_only(handler: Handler, server_header: str) -> Any:
    """``handler`` for requests whose target is a path; a 404 in OpenAI's shape for the rest.

    A plain function, not a coroutine, so that the requests it passes on pay no extra await.
    """

    async def not_a_path(request: web.Request) -> web.StreamResponse:
        # No application, so none of its wrappers or hooks: the 404 is made here.
        try:
            await unknown_route.__wrapped__(request)  # type: ignore[attr-defined]
        except ProxyError as e:
            response = OPENAI.response(e, request_id(request))
        response.headers["Server"] = server_header
        return response

    def handle(request: web.Request) -> Any:
        return handler(request) if request.path.startswith("/") else not_a_path(request)

    return handle


class _Server(web.Server):
    server_header: str

    def __call__(self) -> RequestHandler:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        connection.server_header = self.server_header
        return connection


class _Connection(RequestHandler):
    """One client connection, whose protocol errors are answered as API errors."""

    server_header = ""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has begun; no error can be sent")
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            text, type_, code = ("The gateway failed on this request; try again.",
                                 "server_error", "internal_error")
        else:
            reason = _reason(status, exc, message)
            log.debug("malformed request from %s: %s", request.remote, reason)
            text, type_, code = (f"The request is not valid HTTP ({reason}); check the "
                                 "client or proxy that sent it.", "invalid_request_error",
                                 "invalid_http")
        response = web.Response(body=error_body(text, type_, code), status=status,
                                content_type="application/json",
                                headers={"Server": self.server_header})
        response.force_close()
        return response


def _reason(status: int, exc: BaseException | None, message: str | None) -> str:
    """What is wrong with a refused request, quoting none of it: aiohttp's own messages can
    hold the bytes at fault (the start of an oversized header, a caller's token with it)."""
    if isinstance(exc, LineTooLong):
        return f"a line longer than {exc.args[1]} bytes"
    if isinstance(exc, InvalidHeader):
        return "a header with a character or a form HTTP does not allow"
    if isinstance(exc, InvalidURLError):
        return "a request target that is not a URL"
    if isinstance(exc, BadStatusLine) and "HTTPS" not in (message or ""):
        return "a request line that is not HTTP"
    # The rest (llhttp's) name the fault, then quote the bytes after a colon.
    lines = (message or "").strip().splitlines()
    return (lines[0].split(":", 1)[0].strip() if lines else "") or HTTPStatus(status).phrase
