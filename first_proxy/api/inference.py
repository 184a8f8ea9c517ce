"""POST chat/completions, completions and embeddings: each is the same proxy path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..routing import proxy
from ..validation import ENDPOINTS

__all__ = ["HANDLERS"]


def _handler(endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy(request, endpoint)

    handle.__name__ = "post_" + endpoint.replace("/", "_")
    return handle


HANDLERS = {endpoint: _handler(endpoint) for endpoint in ENDPOINTS}
