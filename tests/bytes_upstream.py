"""An upstream that keeps the exact bytes it was sent, for the core's tests."""

from __future__ import annotations

import collections

import orjson
from aiohttp import web

from first_proxy.testing import serve_on_loopback

__all__ = ["BytesUpstream"]


class BytesUpstream:
    """An upstream on loopback that keeps the bytes of the last request bodies it was sent, as
    sent, and answers every POST under /v1/ with what a test sets: for what the gateway must
    survive or leave alone that a well-behaved reference server does not show."""

    #: A chat completion in OpenAI's shape: the answer unless a test sets another.
    COMPLETION = orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "upstream-model",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "ok", "refusal": None}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def __init__(self) -> None:
        self.status = 200
        self.content_type = "application/json"
        self.answer = self.COMPLETION
        self.bodies: collections.deque[bytes] = collections.deque(maxlen=16)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/{endpoint:.+}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = await serve_on_loopback(self._runner) + "/v1"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.Response(body=self.answer, status=self.status,
                            headers={"Content-Type": self.content_type})
