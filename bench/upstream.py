"""A fast, fixed-answer OpenAI-compatible upstream for the benchmark.

It speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` request bodies) on a raw
asyncio protocol to answer ``POST /v1/chat/completions`` and ``/v1/completions`` in JSON, or
in SSE when the body asks for ``"stream": true``, plus ``GET /v1/models`` and ``GET /health``.
A stream comes all at once, or one event every ``"bench_token_interval_ms"`` when the body
sets it, the pace of a model generating tokens.
Every answer is built once at start-up, so the upstream costs next to nothing per request
and the proxy in front of it is what gets measured.

    python bench/upstream.py --port 9101
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time

import orjson

__all__ = ["Answers", "serve"]

MODEL = "bench-model"
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
#: A request may set its own pace: ``"bench_token_interval_ms": 20`` in its body.
_PACE = re.compile(rb'"bench_token_interval_ms"\s*:\s*([0-9.]+)')


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Answers:
    """The prebuilt bytes of every answer: ``tokens`` words, in JSON and as SSE events."""

    def __init__(self, tokens: int = 16) -> None:
        created = int(time.time())
        words = [("Hello" if i == 0 else " word") for i in range(tokens)]
        usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
        self.json = _response("200 OK", b"application/json", orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": created,
            "model": MODEL, "usage": usage, "choices": [{
                "index": 0, "finish_reason": "stop", "logprobs": None,
                "message": {"role": "assistant", "content": "".join(words)}}]}))

        def event(delta: dict, finish: str | None = None, **extra: object) -> bytes:
            return b"data: " + orjson.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                             "logprobs": None}], **extra}) + b"\n\n"

        #: The events of a stream, each sent as its own HTTP chunk, in order.
        self.events = [event({"role": "assistant", "content": ""})]
        self.events += [event({"content": w}) for w in words]
        self.events.append(event({}, "stop"))
        self.usage_event = b"data: " + orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
            "model": MODEL, "choices": [], "usage": usage}) + b"\n\n"
        self.done_event = b"data: [DONE]\n\n"
        self.sse_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.models = _response("200 OK", b"application/json", orjson.dumps({
            "object": "list", "data": [{"id": MODEL, "object": "model", "created": created,
                                        "owned_by": "bench"}]}))
        self.health = _response("200 OK", b"text/plain", b"ok")
        self.not_found = _response("404 Not Found", b"application/json",
                                   b'{"error": {"message": "not found", "type": "not_found"}}')

    def stream(self, usage: bool) -> list[bytes]:
        """The HTTP chunks of one streamed answer, ending with the terminating chunk."""
        events = [*self.events, *([self.usage_event] if usage else []), self.done_event]
        return [self.sse_head + _chunk(events[0]), *(_chunk(e) for e in events[1:]), b"0\r\n\r\n"]


class _Protocol(asyncio.Protocol):
    def __init__(self, answers: Answers, token_delay: float) -> None:
        self.answers = answers
        self.token_delay = token_delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.trickling: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0]
        answers = self.answers
        if method == b"post" and path in (b"/v1/chat/completions", b"/v1/completions"):
            if _STREAM.search(body):
                chunks = answers.stream(usage=_USAGE.search(body) is not None)
                pace = _PACE.search(body)
                delay = float(pace.group(1)) / 1000 if pace else self.token_delay
                if delay:
                    self.busy = True
                    self.trickling = asyncio.ensure_future(self._trickle(chunks, delay))
                else:
                    self.transport.write(b"".join(chunks))
            else:
                self.transport.write(answers.json)
        elif method == b"get" and path == b"/v1/models":
            self.transport.write(answers.models)
        elif method == b"get" and path == b"/health":
            self.transport.write(answers.health)
        else:
            self.transport.write(answers.not_found)

    async def _trickle(self, chunks: list[bytes], delay: float) -> None:
        """Send the first event now and each later one ``delay`` seconds apart."""
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(delay)
            if self.transport is None:
                return
            self.transport.write(chunk)
        self.busy = False
        if self.buffer:
            self.data_received(b"")


async def serve(host: str = "127.0.0.1", port: int = 0, tokens: int = 16,
                token_delay: float = 0.0) -> asyncio.Server:
    """Start serving; the bound port is ``server.sockets[0].getsockname()[1]``."""
    answers = Answers(tokens)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Protocol(answers, token_delay), host, port,
                                    backlog=1024)


async def _main(args: argparse.Namespace) -> None:
    server = await serve(args.host, args.port, args.tokens, args.token_delay / 1000)
    port = server.sockets[0].getsockname()[1]
    print(f"bench upstream: http://{args.host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--tokens", type=int, default=16, help="Words in each answer.")
    parser.add_argument("--token-delay", type=float, default=0.0, metavar="MS",
                        help="Milliseconds between streamed events (0: send them all at once).")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
