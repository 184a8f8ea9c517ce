"""Errors in the route's shape on every route: failing handlers, unknown paths, wrong methods.

There is no middleware: each handler answers its own errors, which keeps two coroutine
layers off every request. The inference handlers do it inline
(:func:`first_proxy.api.inference.proxy`); the others are wrapped in :func:`answers_errors`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import NoReturn

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import MethodNotAllowed, NotFound, ProxyError, internal_error
from ..surfaces import OPENAI, Surface
from .incoming import request_id

__all__ = ["answers_errors", "openai_errors", "unknown_route", "wrong_method"]

log = logging.getLogger("first_proxy")


def answers_errors(handler: Handler, surface: Surface = OPENAI) -> Handler:
    """``handler``, with every error it raises answered in ``surface``'s shape and every
    answer tagged with the request id."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        try:
            response = await handler(request)
        except ProxyError as e:
            return surface.response(e, rid)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                          rid)
            return surface.response(internal_error(rid), rid)
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response

    return handle


#: The wrapper of OpenAI-shaped routes.
openai_errors = answers_errors


@openai_errors
async def unknown_route(request: web.Request) -> NoReturn:
    # The target as sent: ``%0A`` stays three characters, and ``OPTIONS *`` reads as sent.
    raise NotFound(f"There is no route {request.method} {request.raw_path}. The API lives under "
                   "/v1/ (chat/completions, completions, embeddings, models).", code="unknown_route")


def wrong_method(allowed: Iterable[str]) -> Handler:
    """The handler answering any method other than ``allowed`` on a path: a 405."""
    allow = ", ".join(sorted(allowed))

    @openai_errors
    async def method_not_allowed(request: web.Request) -> NoReturn:
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allow}.",
                               headers={"Allow": allow})

    return method_not_allowed
