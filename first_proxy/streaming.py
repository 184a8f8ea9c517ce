"""Server-sent events passed through as they arrive, with usage read on the way."""

from __future__ import annotations

import re
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["SSE_HEADERS", "UsageTee", "next_chunk", "usage_of"]

SSE_HEADERS = CIMultiDictProxy(CIMultiDict({
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # Tell nginx and friends not to hold events back.
    "X-Accel-Buffering": "no",
}))


_USAGE = b'"usage"'
_BLANK_LINES = (b"\n\n", b"\n\r\n")


# An event ends with a blank line: "\n\n", or "\n\r\n" (the end of "\r\n\r\n", which some
# servers send). A "\n\r\n" that ends after a given "\n\n" can only start after it, and one
# that ends before it must start before it, so each search below stops where the other's
# answer makes it pointless to go on.


def _last_boundary_end(data: bytes, stop: int) -> int:
    """Just past the last blank line in ``data[:stop]`` (0 if there is none)."""
    lf = data.rfind(b"\n\n", 0, stop)
    crlf = data.rfind(b"\n\r\n", lf + 1, stop)
    return crlf + 3 if crlf >= 0 else lf + 2 if lf >= 0 else 0


def _next_boundary_end(data: bytes, start: int) -> int:
    """Just past the first blank line in ``data[start:]`` (``len(data)`` if there is none)."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\n\r\n", start, len(data) if lf < 0 else lf + 1)
    return crlf + 3 if crlf >= 0 else lf + 2 if lf >= 0 else len(data)


class UsageTee:
    """Watches SSE bytes on their way to the caller for the ``usage`` object.

    Bytes are passed on event by event: a partial event waits for its end, nothing more. When
    the core asked for a usage chunk the caller did not (``hide_usage_chunk``), that chunk is
    read and left out, so the caller sees exactly the stream it asked for. Only the events
    that mention ``"usage"`` are looked at, found by byte search from the end, where the
    usage chunk is; only those whose ``usage`` is an object are parsed (OpenAI puts
    ``"usage": null`` in every other chunk). The others pass as they are.
    """

    __slots__ = ("_pending", "hide_usage_chunk", "usage")

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        self.hide_usage_chunk = hide_usage_chunk
        self.usage: dict[str, Any] | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Bytes of complete events to forward now."""
        data = self._pending + chunk if self._pending else chunk
        if data.endswith(_BLANK_LINES):  # whole events, as upstreams mostly send them
            ready, self._pending = data, b""
        else:
            end = _last_boundary_end(data, len(data))
            if not end:
                self._pending = data
                return b""
            ready, self._pending = data[:end], data[end:]
        at = ready.rfind(_USAGE)
        return ready if at < 0 else self._filter(ready, at)

    def flush(self) -> bytes:
        """Whatever is left when the upstream ends."""
        rest, self._pending = self._pending, b""
        at = rest.rfind(_USAGE)
        return rest if at < 0 else self._filter(rest, at)

    def _filter(self, data: bytes, at: int) -> bytes:
        """``data`` less the usage chunk to hide; ``at`` is where ``"usage"`` last appears.

        Events are read from the last one back: the first with a ``usage`` object holds the
        latest usage, and the search ends at the usage chunk (no ``choices``), which comes
        after every other event that matters.
        """
        latest = None
        while at >= 0:
            start, end = _last_boundary_end(data, at), _next_boundary_end(data, at)
            message = self._message(data, start, at, end)
            if message is not None:
                latest = latest or message["usage"]
                if not message.get("choices"):
                    self.usage = latest
                    if not self.hide_usage_chunk:
                        return data
                    return data[:start] + data[end:] if end < len(data) else data[:start]
            at = data.rfind(_USAGE, 0, start)
        if latest is not None:
            self.usage = latest
        return data

    @staticmethod
    def _message(data: bytes, start: int, at: int, end: int) -> dict[str, Any] | None:
        """The event ``data[start:end]``, parsed, if it has a ``usage`` object; ``"usage"`` is
        last mentioned at ``at``."""
        value = data[at + 7 : at + 12].lstrip(b" \t:")
        if value[:1] != b"{" and data.find(_USAGE, start, at) < 0:
            return None  # "usage": null, or the word in a comment
        event = data[start:end].rstrip(b"\r\n")
        # ``find``, not ``in``: on bytes, ``in`` makes and drops a TypeError first.
        if event.startswith(b"data:") and event.find(b"\n") < 0:
            payload = event[5:]
        else:
            payload = b"".join(line[5:].strip() for line in event.splitlines()
                               if line.startswith(b"data:"))
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if isinstance(message, dict) and isinstance(message.get("usage"), dict):
            return message
        return None


#: ``"usage": {...}`` with objects at most one level deep inside (OpenAI's token details):
#: what answers hold, matched in one go.
_USAGE_OBJECT = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a JSON answer, read without parsing the whole body.

    Embeddings answers can be megabytes of floats; ``usage`` sits near the end and is small.
    """
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    found = _USAGE_OBJECT.match(body, at)
    if found is None:
        return _nested_usage(body, at)
    try:
        usage = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None


def _nested_usage(body: bytes, at: int) -> dict[str, Any] | None:
    """``usage_of`` for a ``usage`` (mentioned at ``at``) that is not an object nested at most
    two deep: deeper, null, or a key inside a string."""
    start = body.find(b"{", at)
    if start < 0 or body[at + 7 : start].strip(b" \t\r\n:"):
        return None  # "usage": null, or a key inside a string
    # Find the brace that closes the one at ``start``, jumping from brace to brace.
    limit = min(len(body), start + 4096)
    depth, at = 0, start
    while True:
        end = body.find(b"}", at, limit)
        if end < 0:
            return None
        depth += body.count(b"{", at, end) - 1
        if depth == 0:
            break
        at = end + 1
    try:
        usage = orjson.loads(body[start : end + 1])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None


async def next_chunk(chunks: Any) -> bytes:
    """The first non-empty chunk of an upstream stream (StopAsyncIteration if none)."""
    while True:
        chunk = await chunks.__anext__()
        if chunk:
            return chunk
