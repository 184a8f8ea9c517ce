"""How a streamed answer ends: at ``[DONE]``, with the upstream's connection kept for the next call.

The upstream here is a plain aiohttp server that streams a fixed answer and notes the client
port of every request, so that a new connection shows as a new port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
DONE = b"data: [DONE]\n\n"
#: Long enough for any answer here; a gateway that waits for the upstream fails, not hangs.
WHOLE_ANSWER = aiohttp.ClientTimeout(total=30)


class StreamingUpstream:
    """Streams ``events`` (each its own write) to every chat request, then, once ``release``
    is set, ``tail``; records the client port of every request."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events
        self.tail: list[bytes] = []
        self.release = asyncio.Event()
        self.release.set()
        self.ports: list[int] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in self.events:
            await response.write(event)
        await self.release.wait()
        for event in self.tail:
            await response.write(event)
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, StreamingUpstream]]:
    streaming = StreamingUpstream([CONTENT, CONTENT, USAGE, DONE])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", streaming.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", streaming
    streaming.release.set()
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
        async with aiohttp.ClientSession(timeout=WHOLE_ANSWER) as http:
            body, request_id = await stream(server, http)
        assert body == CONTENT * 2 + DONE
        row = await server.log_row(request_id)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 1)
    assert len(streaming.ports) == 3
    assert len(set(streaming.ports)) == 1, "each stream opened a new upstream connection"


async def test_the_answer_ends_at_done_and_nothing_after_it_is_passed_on(
        server: GatewayServer, upstream: tuple[str, StreamingUpstream]) -> None:
    _, streaming = upstream
    streaming.events = [CONTENT, DONE]
    streaming.tail = [b'data: {"after": "done"}\n\n']
    streaming.release.clear()
    async with aiohttp.ClientSession(timeout=WHOLE_ANSWER) as http:
        # The caller's answer is whole while the upstream has not ended its own yet.
        body, request_id = await stream(server, http)
        assert body == CONTENT + DONE
        streaming.release.set()
        row = await server.log_row(request_id)
        assert row["status"] == 200 and row["error"] is None
        # The rest of the upstream's answer was read: the next stream uses the same connection.
        streaming.tail = []
        body, _ = await stream(server, http)
    assert body == CONTENT + DONE
    assert len(streaming.ports) == 2 and len(set(streaming.ports)) == 1


async def test_a_caller_who_leaves_after_done_was_answered(
        server: GatewayServer, upstream: tuple[str, StreamingUpstream]) -> None:
    _, streaming = upstream
    streaming.events = [CONTENT, DONE]
    streaming.release.clear()
    async with aiohttp.ClientSession(timeout=WHOLE_ANSWER) as http:
        body, request_id = await stream(server, http)
    assert body == CONTENT + DONE
    row = await server.log_row(request_id)
    assert row["status"] == 200 and row["error"] is None
    streaming.release.set()
