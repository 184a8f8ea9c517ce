"""Forwarding a call to an OpenAI-compatible HTTP server: the helper HTTP backends share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import hdrs
from yarl import URL

from .errors import UpstreamError
from .headers import REQUEST_ID
from .types import Call, Target, UpstreamResponse

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["post_openai"]


async def post_openai(
    gateway: Gateway,
    target: Target,
    call: Call,
    *,
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> UpstreamResponse:
    """POST ``call`` to ``{target.url}/{call.endpoint}`` with the target's own key.

    A streamed 200 comes back as ``chunks`` read as they arrive; anything else (an upstream
    that answers a streaming request with plain JSON included) is read whole.
    Connection failures raise :class:`UpstreamError`, which makes the core fail over. None of
    the caller's headers is passed on: the upstream sees the target's key, never the caller's.
    """
    base = url or target.url
    if not base:
        raise UpstreamError(f"target {target.name!r} has no url")
    out = {hdrs.CONTENT_TYPE: "application/json", REQUEST_ID: call.request_id}
    if target.api_key:
        out[hdrs.AUTHORIZATION] = f"Bearer {target.api_key}"
    if headers:
        out.update(headers)
    try:
        response = await gateway.session(target).post(
            _url(base, call.endpoint), data=call.payload(target), headers=out,
            allow_redirects=False,
        )
    except aiohttp.ClientError as e:
        raise UpstreamError(f"cannot reach target {target.name!r}: {_describe(e)}") from e
    if (call.stream and response.status == 200
            and _is_event_stream(response.headers.get(hdrs.CONTENT_TYPE, ""))):
        return UpstreamResponse(
            status=200, headers=response.headers, chunks=response.content.iter_any(),
            close=_closer(response), at_eof=response.content.at_eof,
        )
    try:
        body = await response.read()
    except aiohttp.ClientError as e:
        response.release()
        raise UpstreamError(f"target {target.name!r} broke off its answer: {_describe(e)}") from e
    except BaseException:
        response.release()
        raise
    # Read whole, the answer has given its connection back: ``release`` would only tell its
    # spent stream so, at the cost of an exception aiohttp makes and drops.
    return UpstreamResponse(status=response.status, headers=response.headers, body=body)


@lru_cache(maxsize=1024)
def _url(base: str, endpoint: str) -> URL:
    """``{base}/{endpoint}``, parsed once rather than on every call."""
    return URL(f"{base}/{endpoint}")


def _closer(response: aiohttp.ClientResponse) -> Callable[[], None]:
    """``close`` for a streamed answer: one cut short (the caller left, a deadline passed)
    loses its connection, which tells the upstream to stop; one read to its end has given its
    connection back already, and closing it would only tell its spent stream so, at the cost
    of an exception aiohttp makes and drops."""
    def close() -> None:
        if not response.content.at_eof():
            response.close()
    return close


@lru_cache(maxsize=64)
def _is_event_stream(content_type: str) -> bool:
    """Whether a Content-Type header names SSE; parsed once per spelling an upstream uses."""
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
