"""Errors in the route's shape on every route: failing handlers, unknown paths, wrong methods.

There is no middleware: each handler answers its own errors, which keeps two coroutine
layers off every request. The inference handlers do it inline
(:func:`first_proxy.api.inference.proxy`); the others are wrapped in :func:`answers_errors`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from typing import NoReturn

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import MethodNotAllowed, NotFound, ProxyError, internal_error
from ..keys import GATEWAY
from ..surfaces import OPENAI, Surface
from ..types import RequestRecord
from .incoming import request_id

__all__ = ["answers_errors", "unknown_route", "wrong_method"]

log = logging.getLogger("first_proxy")


def answers_errors(handler: Handler, surface: Surface = OPENAI) -> Handler:
    """``handler``, with every error it raises answered in ``surface``'s shape, every answer
    tagged with the request id, and a line in the access log for each."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        ts, started = time.time(), time.perf_counter()
        rid = request_id(request)
        error = None
        try:
            response = await handler(request)
            if not response.prepared:
                response.headers["X-Request-Id"] = rid
        except ProxyError as e:
            response, error = surface.response(e, rid), e.code
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                          rid)
            response, error = surface.response(internal_error(rid), rid), "internal_error"
        gateway = request.app[GATEWAY]
        if not response.prepared:
            response.headers["Server"] = gateway.config.server.server_header
        access = gateway.access_log
        if access is not None:
            row = RequestRecord(ts, rid, "", status=response.status, error=error,
                                latency_ms=(time.perf_counter() - started) * 1000)
            access.add(row, request.method, request.rel_url.raw_path)
        return response

    return handle


@answers_errors
async def unknown_route(request: web.Request) -> NoReturn:
    # The target as sent: ``%0A`` stays three characters, and ``OPTIONS *`` reads as sent.
    raise NotFound(f"There is no route {request.method} {request.raw_path}. The API lives under "
                   "/v1/ (chat/completions, completions, embeddings, models).", code="unknown_route")


def wrong_method(allowed: Iterable[str]) -> Handler:
    """The handler answering any method other than ``allowed`` on a path: a 405."""
    allow = ", ".join(sorted(allowed))

    @answers_errors
    async def method_not_allowed(request: web.Request) -> NoReturn:
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allow}.",
                               headers={"Allow": allow})

    return method_not_allowed
