"""How a streamed answer ends: whole, with the upstream's connection kept for the next call.

The upstream here is a plain aiohttp server that streams a fixed answer and notes the client
port of every request, so that a new connection shows as a new port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, serve_on_loopback

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
DONE = b"data: [DONE]\n\n"


class StreamingUpstream:
    """Streams ``events`` (each its own write) to every chat request; records client ports."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events
        self.ports: list[int] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in self.events:
            await response.write(event)
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, StreamingUpstream]]:
    streaming = StreamingUpstream([CONTENT, CONTENT, USAGE, DONE])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", streaming.chat)
    runner = web.AppRunner(app, access_log=None)
    yield await serve_on_loopback(runner) + "/v1", streaming
    await runner.cleanup()


@pytest.fixture
async def server(make_gateway: Any, upstream: tuple[str, StreamingUpstream]) -> GatewayServer:
    url, _ = upstream
    return await make_gateway({"models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": url}]}}}, plugins=[ReferenceBackend()])


async def stream(server: GatewayServer, http: aiohttp.ClientSession) -> tuple[bytes, str]:
    """One streamed chat answer: (its body, its request id)."""
    async with http.post(f"{server.base_url}/chat/completions", headers=AUTH,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                               "stream": True}) as response:
        assert response.status == 200
        return await response.read(), response.headers["X-Request-Id"]


async def test_streamed_answers_reuse_the_upstream_connection(
        server: GatewayServer, upstream: tuple[str, StreamingUpstream]) -> None:
    _, streaming = upstream
    for _ in range(3):
        async with aiohttp.ClientSession() as http:
            body, request_id = await stream(server, http)
        assert body == CONTENT * 2 + DONE
        row = await server.log_row(request_id)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 1)
    assert len(streaming.ports) == 3
    assert len(set(streaming.ports)) == 1, "each stream opened a new upstream connection"
