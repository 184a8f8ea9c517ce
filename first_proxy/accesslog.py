"""The access log: one line per request, written in batches off the request path."""

from __future__ import annotations

import asyncio
import logging
import time

from .requestlog import RequestRecord

__all__ = ["ACCESS_LOGGER", "AccessLog"]

#: The logger the lines go to, at INFO.
ACCESS_LOGGER = "first_proxy.access"
#: Seconds from a request's end to the write of its line, at most.
WRITE_DELAY = 0.1

log = logging.getLogger(ACCESS_LOGGER)

# time method path status latency user model target request-id tokens-in/out [error]
_LINE = "%s.%03d %s %s %d %.1fms user=%s model=%s target=%s id=%s tokens=%s/%s"


class AccessLog:
    """Lines for the requests answered, written together a moment later.

    A request hands over its log row, method and path: a list append. The first request
    after a write schedules the next one, ``delay`` (:data:`WRITE_DELAY`) seconds later. A write formats
    every waiting row with one precomputed format, each line stamped with the time its request
    began, and passes them to the ``first_proxy.access`` logger as one message: one log
    record and one write to the log's stream per batch, where a per-request access logger
    makes a record, formats a time and writes to the stream for every request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float | None = None) -> None:
        self._loop = loop
        self._delay = WRITE_DELAY if delay is None else delay
        self._entries: list[tuple[RequestRecord, str, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def add(self, row: RequestRecord, method: str, path: str) -> None:
        """Queue the line of a finished request; never waits."""
        entries = self._entries
        entries.append((row, method, path))
        if len(entries) == 1:
            self._timer = self._loop.call_later(self._delay, self.write)

    @property
    def pending(self) -> int:
        return len(self._entries)

    def write(self) -> None:
        """Write every queued line now."""
        entries, self._entries = self._entries, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if entries:
            log.info("\n".join([self._line(*entry) for entry in entries]))

    def _line(self, row: RequestRecord, method: str, path: str) -> str:
        ts = row.ts
        second = int(ts)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        prompt, completion = row.prompt_tokens, row.completion_tokens
        line = _LINE % (
            self._stamp, (ts - second) * 1000, method, path, row.status, row.latency_ms,
            row.user or "-", row.model or "-", row.target or "-", row.request_id,
            "-" if prompt is None else prompt, "-" if completion is None else completion)
        return f"{line} error={row.error}" if row.error else line
