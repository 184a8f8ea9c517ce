"""A reference OpenAI-compatible server on loopback, to put behind a gateway in tests and demos.

It answers chat completions, completions, embeddings and models, in JSON or SSE, with
deterministic text (it repeats the prompt back). Every behaviour a gateway must survive can
be switched on: error statuses, delays, a stream that breaks in the middle, an answer that
never comes. It records what it received and which requests were abandoned by their caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["ReceivedRequest", "ReferenceUpstream"]


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


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
    received: list[ReceivedRequest] = field(default_factory=list)
    #: Requests whose caller went away before the answer was complete.
    cancelled: int = 0
    #: Requests being answered now.
    active: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    # -- running ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL ending in /v1."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}/v1"
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
        body = orjson.loads(await request.read())
        self.received.append(ReceivedRequest(request.path, dict(request.headers), body))
        self.active += 1
        try:
            return await self._respond(request, endpoint, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def _respond(self, request: web.Request, endpoint: str,
                       body: dict[str, Any]) -> web.StreamResponse:
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
        model = body.get("model")
        if model not in self.models:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if endpoint == "embeddings":
            return web.json_response(_embeddings(body))
        words = _reply_words(endpoint, body)
        if body.get("stream"):
            return await self._stream(request, endpoint, body, words)
        return web.json_response(_completion(endpoint, model, words, _prompt_tokens(body)))

    async def _stream(self, request: web.Request, endpoint: str, body: dict[str, Any],
                      words: list[str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident = f"cmpl-{uuid.uuid4().hex[:12]}"
        for i, word in enumerate(words):
            if self.break_after is not None and i >= self.break_after:
                # An abrupt end, as when a server process dies mid-answer.
                assert request.transport is not None
                request.transport.abort()
                return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await response.write(_event(_chunk(endpoint, body["model"], ident, word)))
        await response.write(_event(_chunk(endpoint, body["model"], ident, None)))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            usage = _usage(_prompt_tokens(body), len(words))
            await response.write(_event({"id": ident, "object": _object(endpoint, True),
                                         "created": int(time.time()), "model": body["model"],
                                         "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _check_key(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "authentication_error")
        return None


def _error(status: int, message: str, type_: str = "server_error") -> web.Response:
    # vLLM's own error shape, with the message on top; the gateway rewraps it for callers.
    return web.json_response({"object": "error", "message": message, "type": type_,
                              "param": None, "code": status}, status=status)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _reply_words(endpoint: str, body: dict[str, Any]) -> list[str]:
    if endpoint == "chat/completions":
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content", "")
        text = content if isinstance(content, str) else " ".join(
            part.get("text", "") for part in content if isinstance(part, dict))
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    words = text.split() or ["(empty)"]
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(limit, int) and limit > 0:
        words = words[:limit]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps(body.get("messages") or body.get("prompt") or "")) // 4)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _object(endpoint: str, stream: bool) -> str:
    if endpoint == "chat/completions":
        return "chat.completion.chunk" if stream else "chat.completion"
    return "text_completion"


def _completion(endpoint: str, model: str, words: list[str], prompt_tokens: int) -> dict[str, Any]:
    text = "".join(words)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if endpoint == "chat/completions":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": _object(endpoint, False),
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": _usage(prompt_tokens, len(words))}


def _chunk(endpoint: str, model: str, ident: str, word: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": None if word else "stop",
                              "logprobs": None}
    if endpoint == "chat/completions":
        choice["delta"] = {"content": word} if word is not None else {}
    else:
        choice["text"] = word or ""
    return {"id": ident, "object": _object(endpoint, True), "created": int(time.time()),
            "model": model, "choices": [choice]}


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, item in enumerate(inputs):
        digest = hashlib.sha256(str(item).encode()).digest()
        data.append({"object": "embedding", "index": i,
                     "embedding": [round(b / 255, 4) for b in digest[:16]]})
    tokens = sum(len(str(item).split()) for item in inputs)
    return {"object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
