"""A reference OpenAI-compatible server on loopback, to put behind a gateway in tests and demos.

It answers chat completions, completions, embeddings and models, in JSON or SSE, to OpenAI's
schemas, with deterministic text (it repeats the prompt back: see :mod:`.openai_answers`).
What it cannot answer gets a 4xx in vLLM's error shape. Every behaviour a gateway must survive
can be switched on: error statuses, delays, a stream that breaks in the middle, an answer that
never comes. It records the latest requests it received and which were abandoned by their
caller.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .loopback import serve_on_loopback
from .openai_answers import Answer, Reply, embeddings, replies
from .openai_requests import Ask, BadRequest, parse_body, read_ask

__all__ = ["ReceivedRequest", "ReferenceUpstream"]


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    #: The body's JSON value; None when it was not JSON.
    body: Any


@dataclass
class ReferenceUpstream:
    """The server and its switches; change them between requests."""

    models: list[str] = field(default_factory=lambda: ["reference-model"])
    #: When set, requests must carry ``Authorization: Bearer <api_key>`` or get 401.
    api_key: str | None = None
    #: Answer this status (with an OpenAI error body) ...
    fail_status: int | None = None
    #: ... to this many requests (None: all of them).
    fail_times: int | None = None
    #: Seconds before the answer starts.
    delay: float = 0.0
    #: Seconds between streamed events.
    chunk_delay: float = 0.0
    #: Break the connection after this many streamed events.
    break_after: int | None = None
    #: Never answer at all.
    hang: bool = False
    #: Served at GET /metrics (a vLLM-style Prometheus text), when set.
    metrics_text: str | None = None
    #: How many requests ``received`` keeps, the latest; 0 records none.
    max_received: int = 1000
    #: The latest requests, oldest first (set up from ``max_received``).
    received: deque[ReceivedRequest] = field(init=False)
    #: Requests whose caller went away before the answer was complete.
    cancelled: int = 0
    #: Requests being answered now.
    active: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.received = deque(maxlen=self.max_received)

    # -- running ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL ending in /v1."""
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_errors_in_shape])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self.url = await serve_on_loopback(self._runner, host, port) + "/v1"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ReferenceUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers -----------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "reference"}
            for m in self.models]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_text is None:
            raise web.HTTPNotFound()
        return web.Response(text=self.metrics_text)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "chat/completions")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "completions")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "embeddings")

    async def _answer(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        body: Any = None
        unreadable: BadRequest | None = None
        try:
            body = parse_body(await request.read())
        except BadRequest as e:
            unreadable = e
        except web.RequestPayloadError:
            # What is left of the body cannot be read either: end it here (aiohttp would read
            # on after the answer, to reuse the connection) and close the connection.
            request.content.feed_eof()
            unreadable = BadRequest("The request body could not be read: it does not match its "
                                    "Content-Encoding or Transfer-Encoding header.")
        self.received.append(ReceivedRequest(request.path, dict(request.headers), body))
        self.active += 1
        try:
            response = await self._respond(request, endpoint, body, unreadable)
            if unreadable is not None and not response.prepared:
                response.force_close()
            return response
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def _respond(self, request: web.Request, endpoint: str, body: Any,
                       unreadable: BadRequest | None) -> web.StreamResponse:
        if (denied := self._check_key(request)) is not None:
            return denied
        if self.hang:
            await asyncio.Event().wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None and (self.fail_times is None or self.fail_times > 0):
            if self.fail_times is not None:
                self.fail_times -= 1
            return _error(self.fail_status, f"reference upstream failing with {self.fail_status}")
        if unreadable is not None:
            return _refusal(unreadable)
        try:
            ask = read_ask(endpoint, body)
        except BadRequest as e:
            return _refusal(e)
        if ask.model not in self.models:
            return _error(404, f"The model `{ask.model}` does not exist.", "NotFoundError", "model")
        if endpoint == "embeddings":
            return web.json_response(embeddings(ask))
        if ask.stream:
            return await self._stream(request, ask)
        return web.json_response(Answer(ask).whole(replies(ask)))

    async def _stream(self, request: web.Request, ask: Ask) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        answer, choices = Answer(ask), replies(ask)
        for sent, chunk in enumerate(_chunks(answer, choices)):
            if self.break_after is not None and sent >= self.break_after:
                # An abrupt end, as when a server process dies mid-answer.
                assert request.transport is not None
                request.transport.abort()
                return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await response.write(_event(chunk))
        if ask.include_usage:
            await response.write(_event(answer.usage_chunk(choices)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _check_key(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "authentication_error")
        return None


def _chunks(answer: Answer, choices: list[Reply]) -> Iterator[dict[str, Any]]:
    """A stream's chunks: token by token, the choices in turn, then each choice's last chunk."""
    tokens = [reply.tokens or [""] for reply in choices]
    for at in range(max(map(len, tokens))):
        for index, mine in enumerate(tokens):
            if at < len(mine):
                yield answer.chunk(index, mine[at], first=at == 0)
    for index, reply in enumerate(choices):
        yield answer.last_chunk(index, reply)


def _error(status: int, message: str, type_: str = "server_error",
           param: str | None = None) -> web.Response:
    # vLLM's own error shape, with the message on top; the gateway rewraps it for callers.
    return web.json_response({"object": "error", "message": message, "type": type_,
                              "param": param, "code": status}, status=status)


def _refusal(problem: BadRequest) -> web.Response:
    return _error(problem.status, problem.message, _error_type(problem.status), problem.param)


@web.middleware
async def _errors_in_shape(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 4xx (no such route, wrong method, body too large) in the same shape."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.reason, _error_type(e.status))


def _error_type(status: int) -> str:
    """vLLM's name for an error status: ``BadRequestError`` for 400, ``NotFoundError`` for 404."""
    return HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"
