"""The reference model's answers, written to OpenAI's response schema.

The model repeats its prompt back, one word per token (and per streamed event), the first
word bare and every other with its leading space. A stop sequence ends the answer before it
(``finish_reason: stop``); ``max_tokens`` or the model's context, :data:`MAX_REPLY_CHARS`,
cuts it short (``length``). Usage counts words as tokens.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .openai_requests import Ask

__all__ = ["MAX_REPLY_CHARS", "Answer", "Reply", "embeddings", "replies"]

#: The longest answer text one choice holds (the reference model's context).
MAX_REPLY_CHARS = 8192

_TOKEN = re.compile(r"\s*\S+|\s+$")


@dataclass(frozen=True)
class Reply:
    """One choice's answer: its tokens, and why it ended."""

    tokens: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def replies(ask: Ask) -> list[Reply]:
    """The answer's choices: ``n`` for each prompt, in prompt order."""
    return [reply for prompt in ask.prompts for reply in [_reply(prompt, ask)] * ask.n]


def _reply(prompt: str, ask: Ask) -> Reply:
    text, reason = " ".join(prompt.split()) or "(empty)", "stop"
    stops = [at for at in (text.find(s) for s in ask.stop) if at >= 0]
    if stops:
        text = text[:min(stops)]
    if len(text) > MAX_REPLY_CHARS:
        text, reason = text[:MAX_REPLY_CHARS], "length"
    tokens = _TOKEN.findall(text)
    if ask.max_tokens is not None and len(tokens) > ask.max_tokens:
        tokens, reason = tokens[:ask.max_tokens], "length"
    return Reply(tokens, reason)


class Answer:
    """The JSON answer to one chat or completions request, or its stream's chunks."""

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self.chat = ask.endpoint == "chat/completions"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def whole(self, choices: list[Reply]) -> dict[str, Any]:
        listed = []
        for index, reply in enumerate(choices):
            choice: dict[str, Any] = {"index": index, "finish_reason": reply.finish_reason,
                                      "logprobs": None}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": reply.text, "refusal": None}
            else:
                choice["text"] = reply.text
            listed.append(choice)
        return self._object(listed, usage=self.usage(choices))

    def chunk(self, index: int, token: str, first: bool) -> dict[str, Any]:
        """A chunk with one token of choice ``index``; the first also names the role."""
        choice: dict[str, Any] = {"index": index, "finish_reason": None, "logprobs": None}
        if not self.chat:
            choice["text"] = token
        elif first:
            choice["delta"] = {"role": "assistant", "content": token, "refusal": None}
        else:
            choice["delta"] = {"content": token}
        return self._object([choice])

    def last_chunk(self, index: int, reply: Reply) -> dict[str, Any]:
        """The chunk that ends choice ``index``, with its finish reason."""
        choice: dict[str, Any] = {"index": index, "finish_reason": reply.finish_reason,
                                  "logprobs": None}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        return self._object([choice])

    def usage_chunk(self, choices: list[Reply]) -> dict[str, Any]:
        """The chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
        return self._object([], usage=self.usage(choices))

    def usage(self, choices: list[Reply]) -> dict[str, int]:
        completion = sum(len(reply.tokens) for reply in choices)
        return {"prompt_tokens": self.ask.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.ask.prompt_tokens + completion}

    def _object(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if self.ask.stream else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.ask.model,
                "choices": choices, **extra}


def embeddings(ask: Ask) -> dict[str, Any]:
    """An embeddings answer: a vector per input, the same for the same text."""
    data = []
    for index, text in enumerate(ask.prompts):
        vector = [round(b / 255, 4) for b in hashlib.shake_256(text.encode()).digest(ask.dimensions)]
        embedding: list[float] | str = vector
        if ask.encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": ask.model,
            "usage": {"prompt_tokens": ask.prompt_tokens, "total_tokens": ask.prompt_tokens}}
