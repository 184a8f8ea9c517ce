"""Requests to the reference upstream, checked against OpenAI's request schema.

Only the fields the reference model reads are checked (``model``, the prompt, ``n``, the token
limits, ``stop``, ``stream``, ``stream_options``, the embeddings options); every other field is
accepted as it comes, as a real server ignores sampling settings it does not use. A request
it cannot answer raises :class:`BadRequest`, which the server answers with a 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Ask", "BadRequest", "parse_body", "read_ask"]

#: OpenAI's schema maximum for ``n``.
MAX_N = 128
#: Choices (prompts times ``n``) or embeddings inputs one answer may hold: 2,048 is OpenAI's
#: documented limit on an embeddings input array.
MAX_CHOICES = 2048
#: Embedding sizes it makes (``dimensions``); the default is 16.
MAX_DIMENSIONS = 4096
#: Stop sequences, as OpenAI's schema allows.
MAX_STOP = 4

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "refusal", "file"})


class BadRequest(Exception):
    """A request the reference upstream cannot answer: status, message and the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass(frozen=True)
class Ask:
    """A checked request: what the reference model is asked to do."""

    endpoint: str
    model: str
    #: The text each prompt asks it to repeat; embeddings: the text of each input.
    prompts: tuple[str, ...]
    prompt_tokens: int
    n: int = 1
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    encoding_format: str = "float"
    dimensions: int = 16


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body; :class:`BadRequest` when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"The request body is not valid JSON: {e}.") from None


def read_ask(endpoint: str, body: Any) -> Ask:
    """Check ``body`` for ``endpoint`` (``chat/completions``, ``completions`` or ``embeddings``)."""
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_kind(body)}.")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest(f"`model` must be a string, not {_kind(model)}.", "model")
    if endpoint == "embeddings":
        return _embeddings(body, model)
    if endpoint == "chat/completions":
        text, tokens = _chat_text(body.get("messages"))
        prompts = (text,)
        limit = _optional_int(body, "max_completion_tokens", 0)
        older = _optional_int(body, "max_tokens", 0)
        limit = older if limit is None else limit
    else:
        prompts, tokens = _prompts(body.get("prompt"))
        limit = _optional_int(body, "max_tokens", 0)
    n = _optional_int(body, "n", 1, MAX_N)
    n = 1 if n is None else n
    if len(prompts) * n > MAX_CHOICES:
        raise BadRequest(f"{len(prompts)} prompt(s) times n={n} is over the {MAX_CHOICES} "
                         "choices one answer may hold; send fewer.", "n")
    stream = _optional(body, "stream", bool) or False
    options = _optional(body, "stream_options", dict) or {}
    include_usage = _optional(options, "include_usage", bool, "stream_options.include_usage")
    return Ask(endpoint, model, prompts, max(1, tokens), n=n, max_tokens=limit,
               stop=_stop(body.get("stop")), stream=stream, include_usage=bool(include_usage))


# -- chat ---------------------------------------------------------------------------------


def _chat_text(messages: Any) -> tuple[str, int]:
    """The text to repeat (the last message's with any) and the words of all of them."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"`messages` must be a non-empty array, not {_kind(messages)}.",
                         "messages")
    text, words = "", 0
    for i, message in enumerate(messages):
        here = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"`{here}` must be an object, not {_kind(message)}.", here)
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"`{here}.role` must be one of {', '.join(sorted(ROLES))}, "
                             f"not {orjson.dumps(role).decode()[:40]}.", f"{here}.role")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise BadRequest(f"`{here}.tool_calls` must be an array, not {_kind(tool_calls)}.",
                             f"{here}.tool_calls")
        here_text = _content_text(message.get("content"), f"{here}.content")
        words += len(here_text.split())
        text = here_text or text
    return text, words


def _content_text(content: Any, here: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequest(f"`{here}` must be a string, an array of parts or null, "
                         f"not {_kind(content)}.", here)
    texts = []
    for i, part in enumerate(content):
        where = f"{here}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise BadRequest(f"`{where}` must be a content part with a `type` of "
                             f"{', '.join(sorted(PART_TYPES))}.", where)
        if kind in ("text", "refusal"):
            if not isinstance(part.get(kind), str):
                raise BadRequest(f"`{where}.{kind}` must be a string.", f"{where}.{kind}")
            if kind == "text":
                texts.append(part["text"])
    return " ".join(texts)


# -- completions and embeddings ---------------------------------------------------------------


def _prompts(prompt: Any) -> tuple[tuple[str, ...], int]:
    """The prompts of a completions request and their token count.

    A string, a list of strings, a list of token ids or a list of such lists; ``null`` and
    ``[]`` are one empty prompt.
    """
    items = _inputs(prompt, "prompt", allow_empty=True)
    texts = tuple(_text(item) for item in items) or ("",)
    return texts, sum(_tokens(item) for item in items)


def _embeddings(body: dict[str, Any], model: str) -> Ask:
    if "input" not in body:
        raise BadRequest("`input` is required: a string, an array of strings, of token ids "
                         "or of arrays of token ids.", "input")
    items = _inputs(body["input"], "input", allow_empty=False)
    if len(items) > MAX_CHOICES:
        raise BadRequest(f"`input` has {len(items)} items; send at most {MAX_CHOICES}.", "input")
    encoding = _optional(body, "encoding_format", str) or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("`encoding_format` must be `float` or `base64`.", "encoding_format")
    dimensions = _optional_int(body, "dimensions", 1, MAX_DIMENSIONS)
    return Ask("embeddings", model, tuple(_text(item) for item in items),
               sum(_tokens(item) for item in items), encoding_format=encoding,
               dimensions=dimensions or 16)


def _inputs(value: Any, name: str, *, allow_empty: bool) -> list[str | list[int]]:
    """A prompt or input as a list of items, each a string or a list of token ids."""
    if value is None and allow_empty:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            if allow_empty:
                return []
            raise BadRequest(f"`{name}` must not be an empty array.", name)
        if all(_is_token(v) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, list) and all(_is_token(t) for t in v) for v in value):
            return value
    raise BadRequest(f"`{name}` must be a string, an array of strings, of token ids or of "
                     f"arrays of token ids, not {_kind(value)}.", name)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(item: str | list[int]) -> str:
    return item if isinstance(item, str) else " ".join(map(str, item))


def _tokens(item: str | list[int]) -> int:
    return len(item.split()) if isinstance(item, str) else len(item)


# -- fields ---------------------------------------------------------------------------------


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise BadRequest(f"`stop` must be a string or an array of at most {MAX_STOP} strings.",
                     "stop")


def _optional(body: dict[str, Any], key: str, kind: type, name: str | None = None) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"`{name or key}` must be {_KINDS[kind]} or null, not {_kind(value)}.",
                         name or key)
    return value


def _optional_int(body: dict[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_token(value) or value < low or (high is not None and value > high):
        top = f" and at most {high}" if high is not None else ""
        raise BadRequest(f"`{key}` must be an integer of at least {low}{top}, or null.", key)
    return value


_KINDS = {bool: "a boolean", dict: "an object", str: "a string"}


def _kind(value: Any) -> str:
    """How an error message names a JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
