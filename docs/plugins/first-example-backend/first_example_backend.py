"""first-proxy backend ``echo``: a model that answers in-process by repeating the prompt back.

The finished plugin of docs/writing_plugins.md. It needs no server, so it shows the whole
contract of a backend plugin on its own: a backend object with a target validator, JSON and
streamed answers and load reporting; a check of its settings; per-gateway state opened and
released with the gateway; a route of its own, ``GET /example/echo/stats``; and a subcommand.

gateway.yaml::

    plugins:
      first_example_backend:          # the entry-point name
        max_words: 256                # longest answer, in words
    models:
      parrot:
        targets:
          - {name: loud, backend: echo, transform: upper, pace: 0.05}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
from aiohttp import web

from first_proxy import (
    GATEWAY,
    IDENTITY,
    Backend,
    Call,
    Gateway,
    GatewayConfig,
    Status,
    Target,
    UpstreamResponse,
    hookimpl,
)

__all__ = ["BACKEND", "MAX_WORDS", "NAME", "TRANSFORMS", "EchoBackend", "EchoState", "reply_words"]

#: The entry-point name: the key of this plugin's settings under ``plugins:`` in gateway.yaml.
NAME = "first_example_backend"
#: The ``backend:`` name targets use.
BACKEND = "echo"
#: The longest answer, in words, unless ``max_words`` says otherwise.
MAX_WORDS = 256

log = logging.getLogger(NAME)

TRANSFORMS: dict[str, Callable[[str], str]] = {
    "echo": lambda text: text,
    "upper": str.upper,
    "reverse": lambda text: " ".join(reversed(text.split())),
}

# -- settings ---------------------------------------------------------------------------------


def validate_target(target: Target, path: str) -> list[tuple[str, str]]:
    """Start-up checks of one ``echo`` target; ``path`` is its key path in gateway.yaml."""
    problems = []
    if target.url is not None:
        problems.append((f"{path}.url", "backend echo answers in-process: remove url"))
    for key, value in target.options.items():
        if key == "transform":
            if value not in TRANSFORMS:
                problems.append((f"{path}.transform",
                                 f"expected one of {', '.join(TRANSFORMS)}, got {value!r}"))
        elif key == "pace":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append((f"{path}.pace", f"expected seconds >= 0, got {value!r}"))
        else:
            problems.append((f"{path}.{key}",
                             "unknown key for backend echo (known: transform, pace)"))
    return problems


@dataclass
class EchoState:
    """What this plugin keeps for one gateway, in ``gateway.state[NAME]``."""

    max_words: int
    #: Calls answered since start-up.
    answered: int = 0
    #: Streams being written now, per :attr:`Target.key`.
    streaming: Counter[str] = field(default_factory=Counter)


# -- the backend ------------------------------------------------------------------------------


class EchoBackend(Backend):
    """Targets with ``backend: echo``: the core calls this object, and only it, for them."""

    name = BACKEND

    def validate(self, target: Target, path: str) -> list[tuple[str, str]]:
        return validate_target(target, path)

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
        if call.endpoint not in ("chat/completions", "completions"):
            return _error(400, f"backend echo answers chat/completions and completions, "
                               f"not {call.endpoint}")
        state: EchoState = gateway.state[NAME]
        # What an upstream would be sent: the upstream's model name and, when streaming, a
        # request for a usage chunk, which the core keeps from a caller who did not ask for it.
        payload = call.payload(target)
        body = call.body if payload is call.raw else orjson.loads(payload)
        prompt = prompt_text(call.endpoint, body)
        words = reply_words(prompt, target.options.get("transform", "echo"),
                            _limit(body, state.max_words))
        given = len(prompt.split())
        usage = {"prompt_tokens": given, "completion_tokens": len(words),
                 "total_tokens": given + len(words)}
        state.answered += 1
        answer = _Answer(call.endpoint, target.upstream_model)
        if not call.stream:
            return UpstreamResponse(status=200, headers={"Content-Type": "application/json"},
                                    body=orjson.dumps(answer.whole("".join(words), usage)))
        options = body.get("stream_options") or {}
        events = _stream(answer, words, usage if options.get("include_usage") else None,
                         float(target.options.get("pace", 0)), state.streaming, target.key)
        return UpstreamResponse(status=200, headers={"Content-Type": "text/event-stream"},
                                chunks=events, close=events.aclose)

    async def status(self, target: Target, gateway: Gateway) -> Status:
        state: EchoState | None = gateway.state.get(NAME)
        if state is None:
            return Status(reachable=False, last_error="first_example_backend is not started")
        return Status(reachable=True, models={target.upstream_model: "running"}, queue_depth=0,
                      running_requests=state.streaming[target.key],
                      detail={"answered": state.answered})


# -- hooks ------------------------------------------------------------------------------------


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(EchoBackend())


@hookimpl
def check_config(config: GatewayConfig) -> list[tuple[str, str]]:
    """Problems in this plugin's section of gateway.yaml, with their key paths; no I/O."""
    settings = config.plugins.get(NAME, {})
    problems = []
    for key in settings:
        if key != "max_words":
            problems.append((f"plugins.{NAME}.{key}", "unknown setting (known: max_words)"))
    max_words = settings.get("max_words", MAX_WORDS)
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        problems.append((f"plugins.{NAME}.max_words",
                         f"expected a whole number >= 1, got {max_words!r}"))
    return problems


@hookimpl
@contextlib.asynccontextmanager
async def lifespan(gateway: Gateway) -> AsyncIterator[None]:
    """The plugin's state, opened before the first request and closed after the last."""
    settings = gateway.plugin_config(NAME)  # already checked by check_config
    state = gateway.state[NAME] = EchoState(max_words=settings.get("max_words", MAX_WORDS))
    try:
        yield
    finally:
        del gateway.state[NAME]
        log.info("backend echo answered %d call(s)", state.answered)


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    register("GET", "/example/echo/stats", stats)


async def stats(request: web.Request) -> web.Response:
    """``GET /example/echo/stats``: what backend echo did since start-up. The core has
    authenticated the caller (``auth=True``, the default), so only callers with a key see it."""
    state: EchoState = request.app[GATEWAY].state[NAME]
    return web.json_response({"answered": state.answered,
                              "streaming": {key: n for key, n in state.streaming.items() if n},
                              "asked_by": request[IDENTITY].name})


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(example_echo)


@click.command("example-echo")
@click.argument("prompt")
@click.option("--transform", type=click.Choice(list(TRANSFORMS)), default="echo",
              show_default=True, help="What the target's transform: setting would do.")
def example_echo(prompt: str, transform: str) -> None:
    """Print what backend echo answers to PROMPT, without a gateway."""
    click.echo("".join(reply_words(prompt, transform, MAX_WORDS)))


# -- answers ----------------------------------------------------------------------------------


def prompt_text(endpoint: str, body: Mapping[str, Any]) -> str:
    """The text to echo: the last chat message, or the completion prompt."""
    if endpoint == "chat/completions":
        last = body["messages"][-1]
        content = (last.get("content") if isinstance(last, dict) else None) or ""
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    prompt = body["prompt"]
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def reply_words(prompt: str, transform: str, limit: int) -> list[str]:
    """The answer as words, each but the first with its leading space: one per streamed event."""
    words = TRANSFORMS[transform](prompt).split()[:limit] or ["..."]
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


def _limit(body: Mapping[str, Any], max_words: int) -> int:
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        return min(asked, max_words)
    return max_words


class _Answer:
    """OpenAI-shaped answers for one call: the whole thing, or its stream's events."""

    def __init__(self, endpoint: str, model: str) -> None:
        self.chat = endpoint == "chat/completions"
        self.model = model
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        self.created = int(time.time())

    def whole(self, text: str, usage: dict[str, int]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return self._object(False, [choice], usage=usage)

    def event(self, word: str | None) -> bytes:
        """One SSE event: a word, or (``None``) the final event with the finish reason."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": None if word is not None else "stop"}
        if self.chat:
            choice["delta"] = {"content": word} if word is not None else {}
        else:
            choice["text"] = word or ""
        return _sse(self._object(True, [choice]))

    def usage_event(self, usage: dict[str, int]) -> bytes:
        return _sse(self._object(True, [], usage=usage))

    def _object(self, chunk: bool, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat \
            else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}


async def _stream(answer: _Answer, words: list[str], usage: dict[str, int] | None,
                  pace: float, streaming: Counter[str], key: str) -> AsyncIterator[bytes]:
    """The answer as SSE, a word per event, ``pace`` seconds apart.

    When the caller goes away the core cancels or closes it mid-way; ``finally`` still runs.
    """
    streaming[key] += 1
    try:
        for i, word in enumerate(words):
            if pace and i:
                await asyncio.sleep(pace)
            yield answer.event(word)
        yield answer.event(None)
        if usage is not None:
            yield answer.usage_event(usage)
        yield b"data: [DONE]\n\n"
    finally:
        streaming[key] -= 1


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _error(status: int, message: str) -> UpstreamResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": "unsupported_endpoint"}}
    return UpstreamResponse(status=status, headers={"Content-Type": "application/json"},
                            body=orjson.dumps(body))
