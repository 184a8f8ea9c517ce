"""What the gateway's shared upstream sessions keep to themselves: compression, cookies and
the caller's client name; and that they keep their connections for the next call.

The upstream here is a plain aiohttp server that does what commercial APIs do: it compresses
whatever the client accepts, and sets a cookie.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from first_proxy import __version__
from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, serve_on_loopback

MODEL = "reference-model"
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": MODEL,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi " * 200},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 7, "completion_tokens": 200, "total_tokens": 207}}


@pytest.fixture
async def chatty_upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An upstream that gzips what it may and sets a session cookie; yields (url, headers seen)."""
    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        response = web.json_response(ANSWER)
        response.set_cookie("upstream_session", "for-the-first-caller-only")
        response.enable_compression()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    port = (await serve_on_loopback(runner)).rsplit(":", 1)[1]
    # A host name, not an address: cookie jars keep no cookies for bare IP addresses.
    yield f"http://localhost:{port}/v1", seen
    await runner.cleanup()


@pytest.fixture
async def server(make_gateway, chatty_upstream) -> GatewayServer:  # type: ignore[no-untyped-def]
    url, _ = chatty_upstream
    return await make_gateway({"models": {MODEL: {"targets": [
        {"name": "chatty", "backend": "reference", "url": url}]}}}, plugins=[ReferenceBackend()])


async def ask(server: GatewayServer) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{server.base_url}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {TEST_KEY}", "Accept-Encoding": "gzip",
                     "User-Agent": "callers-own-client/1.0"})
        await response.read()
        return response


async def test_the_upstream_is_asked_for_an_uncompressed_answer(server: GatewayServer,
                                                               chatty_upstream) -> None:  # type: ignore[no-untyped-def]
    response = await ask(server)
    assert response.status == 200
    assert orjson.loads(await response.read()) == ANSWER
    _, seen = chatty_upstream
    assert seen[-1]["Accept-Encoding"] == "identity"
    row = await server.log_row(response.headers["X-Request-Id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 200)


async def test_an_upstream_cookie_is_never_sent_back(server: GatewayServer,
                                                      chatty_upstream) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):
        assert (await ask(server)).status == 200
    _, seen = chatty_upstream
    assert len(seen) == 2
    assert all("Cookie" not in headers for headers in seen)


async def test_the_upstream_sees_the_gateway_as_its_client(server: GatewayServer,
                                                          chatty_upstream) -> None:  # type: ignore[no-untyped-def]
    assert (await ask(server)).status == 200
    _, seen = chatty_upstream
    assert seen[-1]["User-Agent"] == f"first-proxy/{__version__}"


#: A streamed answer as an upstream asked for usage sends it.
EVENTS = (b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
          b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
          b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
          b'"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'
          b"data: [DONE]\n\n")


@pytest.fixture
async def counting_upstream() -> AsyncIterator[tuple[str, list[object]]]:
    """An upstream answering JSON or SSE; yields (url, the peer of every request)."""
    peers: list[object] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if not (await request.json()).get("stream"):
            return web.json_response(ANSWER)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in EVENTS.split(b"\n\n")[:-1]:
            await response.write(event + b"\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    yield await serve_on_loopback(runner) + "/v1", peers
    await runner.cleanup()


async def test_answers_read_to_the_end_leave_their_connection_for_the_next_call(
        make_gateway, counting_upstream) -> None:  # type: ignore[no-untyped-def]
    url, peers = counting_upstream
    server = await make_gateway({"models": {MODEL: {"targets": [
        {"name": "counted", "backend": "reference", "url": url}]}}}, plugins=[ReferenceBackend()])
    async with aiohttp.ClientSession() as http:
        for stream in (False, True, False, True, True, False):
            async with http.post(
                    f"{server.base_url}/chat/completions",
                    json={"model": MODEL, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {TEST_KEY}"}) as response:
                assert response.status == 200
                body = await response.read()
                assert body.endswith(b"data: [DONE]\n\n") if stream else b"chatcmpl-1" in body
    assert len(peers) == 6
    assert len(set(peers)) == 1  # one connection, kept and reused by every call
