"""Errors in OpenAI's shape on every route: failing handlers, unknown paths, wrong methods.

There is no middleware: each handler answers its own errors, which keeps two coroutine
layers off every request. The inference handlers do it inline (:func:`first_proxy.routing.proxy`);
the others are wrapped in :func:`openai_errors`.
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
from ..requestlog import RequestRecord
from ..routing import request_id

__all__ = ["openai_errors", "unknown_route", "wrong_method"]

log = logging.getLogger("first_proxy")


def openai_errors(handler: Handler) -> Handler:
    """``handler``, with every error it raises answered in OpenAI's shape, every answer
    tagged with the request id, and a line in the access log for each."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        ts, started = time.time(), time.perf_counter()
        rid = request_id(request)
        error = None
        try:
            response = await handler(request)
            response.headers["X-Request-Id"] = rid
        except ProxyError as e:
            response, error = e.response(rid), e.code
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                          rid)
            response, error = internal_error(rid).response(rid), "internal_error"
        access = request.app[GATEWAY].access_log
        if access is not None:
            row = RequestRecord(ts, rid, "", status=response.status, error=error,
                                latency_ms=(time.perf_counter() - started) * 1000)
            access.add(row, request.method, request.rel_url.raw_path)
        return response

    return handle


@openai_errors
async def unknown_route(request: web.Request) -> NoReturn:
    raise NotFound(f"There is no route {request.method} {request.path}. The API lives under "
                   "/v1/ (chat/completions, completions, embeddings, models).", code="unknown_route")


def wrong_method(allowed: Iterable[str]) -> Handler:
    """The handler answering any method other than ``allowed`` on a path: a 405."""
    allow = ", ".join(sorted(allowed))

    @openai_errors
    async def method_not_allowed(request: web.Request) -> NoReturn:
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allow}.",
                               headers={"Allow": allow})

    return method_not_allowed
