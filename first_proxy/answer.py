"""What the pipeline hands back: a target's answer, ready to deliver as JSON or as a stream.

Delivering it settles the call: usage is read off the answer (or the stream's usage chunk)
into the request-log row and the limits' leases; a stream that fails on the way ends with an
error the caller's API surface shapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import NoTargetAvailable, ProxyError, UpstreamError, UpstreamTimeout
from .failures import as_openai_error
from .inflight import EXPIRED, SHUTTING_DOWN, absorb
from .limits import Leases
from .streaming import UsageTee, usage_of
from .types import Call, RequestRecord, Target, UpstreamResponse

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["Answer", "Write"]

#: Where a stream's bytes go: an aiohttp response's ``write``, or a batch's buffer.
Write = Callable[[bytes], Awaitable[None]]

#: How an OpenAI stream ends.
_DONE = b"data: [DONE]"


class Answer:
    """A target's answer to a call: ``body`` (JSON, or an upstream's error in OpenAI's
    shape), or a stream to deliver with :meth:`stream_to`."""

    __slots__ = (
        "_first",
        "_gateway",
        "_leases",
        "_open",
        "_row",
        "_upstream",
        "body",
        "call",
        "content_type",
        "status",
        "streaming",
        "target",
        "usage",
    )

    def __init__(self, gateway: Gateway, call: Call, target: Target, upstream: UpstreamResponse,
                 first: bytes, row: RequestRecord, leases: Leases | None) -> None:
        self._gateway = gateway
        self.call = call
        self.target = target
        self.status = upstream.status
        self._upstream = upstream
        self._first = first
        self._row = row
        self._leases = leases
        self.body: bytes | None = None
        self.content_type = "application/json"
        #: Whether the answer is a stream, to deliver with :meth:`stream_to`.
        self.streaming = upstream.chunks is not None
        #: What a JSON answer says it used (``None`` for streams, until delivered).
        self.usage = None if self.streaming else self._read_json()
        #: A stream not yet ended: the target counts it among the calls it answers.
        self._open = self.streaming

    def _read_json(self) -> dict[str, Any] | None:
        """Set the body to deliver; the usage it reports, counted into the row. The pipeline
        settles the leases of a JSON answer with it at once."""
        upstream = self._upstream
        if upstream.status >= 400:
            self.body = as_openai_error(upstream, self.call, self.target)
            return None
        self.body = upstream.body or b""
        self.content_type = upstream.content_type or "application/json"
        usage = usage_of(self.body)
        if usage:
            _count(self._row, usage)
        return usage

    async def stream_to(self, write: Write, end: Write) -> ProxyError | None:
        """Deliver the stream through ``write``, its last bytes through ``end`` (which ends the
        answer: an aiohttp response's ``write_eof``); or return the error that cut it short,
        with the answer not ended, for the caller's API surface to write its error event.

        When the upstream has said everything (``UpstreamResponse.at_eof``), its last bytes go
        out with the end of the answer, one write fewer. A stream that stops without OpenAI's
        ``data: [DONE]`` was cut off. The caller's own failures (``write`` raising because the
        caller went away, a cancellation) propagate; the upstream is closed either way. The
        leases are settled when the stream is delivered whole, and released when it is not.
        """
        upstream, row, gateway = self._upstream, self._row, self._gateway
        chunks, at_eof = upstream.chunks, upstream.at_eof
        assert chunks is not None
        task = asyncio.current_task(gateway.loop)
        assert task is not None
        tee = UsageTee(hide_usage_chunk=self.call.usage_injected)
        error: ProxyError | None = None
        settled = False
        gateway.in_flight.expire_in(task, self._remaining())
        try:
            try:
                # The tee hands on whole events only, so the last it handed on holds [DONE].
                data = last = tee.feed(self._first)
                while True:
                    if at_eof is not None and at_eof():
                        data += tee.flush()
                        break
                    if data:
                        last = data
                        await write(data)
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        data = tee.flush()
                        break
                    data = tee.feed(chunk)
                # ``find``, not ``in``: on bytes, ``in`` makes and drops a TypeError first.
                if (data or last).find(_DONE) >= 0:
                    await end(data)
                else:
                    if data:
                        await write(data)
                    error = self._cut_off()
            except asyncio.CancelledError as e:
                if absorb(e, EXPIRED):
                    error = self._too_long()
                elif absorb(e, SHUTTING_DOWN):
                    error = NoTargetAvailable(
                        "The gateway is shutting down and could not finish this answer; send "
                        "the request again.", code="gateway_shutting_down")
                else:
                    raise
            except ConnectionResetError:
                raise  # the caller went away (aiohttp's error for it is a ClientError too)
            except (TimeoutError, aiohttp.ClientError, UpstreamError) as e:
                error = self._too_long() if isinstance(e, TimeoutError) else self._cut_off()
            finally:
                gateway.in_flight.clear(task)
            if error is not None:
                row.error = error.code
                if error.code != "gateway_shutting_down":
                    gateway.metrics.upstream_error(self.call.model, self.target.name, "midstream")
            if tee.usage:
                _count(row, tee.usage)
            if self._leases is not None and error is None:
                settled = True
                await self._leases.settle(tee.usage)
            return error
        finally:
            self._end()
            await upstream.aclose()
            if self._leases is not None and not settled:
                await self._leases.release()

    async def aclose(self) -> None:
        """Give up an answer that will not be delivered (the caller left before it began)."""
        self._end()
        await self._upstream.aclose()
        if self._leases is not None:
            await self._leases.release()

    def _end(self) -> None:
        if self._open:
            self._open = False
            self._gateway.health.ended(self.target)

    def _remaining(self) -> float:
        """Seconds left of the target's total timeout."""
        return self.target.timeouts.total - (time.perf_counter() - self._row.started)

    def _cut_off(self) -> UpstreamError:
        return UpstreamError(f"The target {self.target.name!r} broke off in the middle of the "
                             "answer; send the request again.")

    def _too_long(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"target {self.target.name!r} took longer than its total timeout "
                               f"({self.target.timeouts.total:g} s); the answer is cut short.")


def _count(row: RequestRecord, usage: dict[str, Any]) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    row.prompt_tokens = prompt if isinstance(prompt, int) else None
    row.completion_tokens = completion if isinstance(completion, int) else None
