"""POST chat/completions, completions and embeddings: the HTTP adapter over the pipeline.

It reads what HTTP carries (the caller, the body, a cluster pinned by the path), hands the
call to :func:`first_proxy.pipeline.run`, and delivers the answer as JSON or SSE. Every
failure is answered here in the route's error shape, and every request leaves a log row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from aiohttp import hdrs, web

from ..errors import NoTargetAvailable, ProxyError, internal_error
from ..headers import FIRST_TARGET, REQUEST_ID
from ..inflight import SHUTTING_DOWN, absorb
from ..keys import GATEWAY, IDENTITY
from ..pipeline import run
from ..streaming import SSE_HEADERS
from ..surfaces import OPENAI, Surface
from ..types import Call, RequestRecord
from ..validation import ENDPOINTS, parse_request
from .incoming import authenticate, read_body, request_id

__all__ = ["HANDLERS", "proxy"]

log = logging.getLogger("first_proxy")


async def proxy(request: web.Request, endpoint: str, surface: Surface = OPENAI,
                x_api_key: bool = False) -> web.StreamResponse:
    """Answer one inference request on ``endpoint`` (``chat/completions``, ...)."""
    gateway = request.app[GATEWAY]
    row = RequestRecord(time.time(), request_id(request), endpoint, started=time.perf_counter())
    # Given the loop, current_task() skips finding the running loop, a system call (getpid).
    task = asyncio.current_task(gateway.loop)
    assert task is not None
    gateway.in_flight.add(task)
    try:
        # Set only where ``Expect: 100-continue`` was checked; an empty request skips the
        # lookup, which for a key it lacks costs a KeyError.
        identity = ((len(request) and request.get(IDENTITY))
                    or await authenticate(request, gateway, x_api_key=x_api_key))
        row.user = identity.user_id
        raw = await read_body(request, gateway)
        body = parse_request(raw, endpoint)
        call = Call(endpoint=endpoint, model=body["model"], body=body, raw=raw,
                    stream=body.get("stream") is True, identity=identity,
                    request_id=row.request_id)
        row.stream = call.stream
        if gateway.config.request_log.include_prompts:
            row.prompt = raw.decode("utf-8", "replace")
        cluster = request.match_info.get("cluster")
        pin = None if cluster is None else (cluster, request.match_info["framework"])
        answer = await run(gateway, call, row, pin)
        headers = {REQUEST_ID: row.request_id, hdrs.SERVER: gateway.config.server.server_header}
        if gateway.config.server.expose_target:
            headers[FIRST_TARGET] = answer.target.name
        row.status = answer.status
        if not answer.streaming:
            headers[hdrs.CONTENT_TYPE] = answer.content_type
            return web.Response(body=answer.body, status=answer.status, headers=headers)
        response = web.StreamResponse(headers=SSE_HEADERS)  # copied: a multidict copies fastest
        response.headers.update(headers)
        try:
            await response.prepare(request)
        except BaseException:
            await answer.aclose()
            raise
        try:
            error = await answer.stream_to(response.write, response.write_eof)
            if error is not None:
                await response.write(surface.event(error))
                await response.write_eof()
        except ConnectionResetError:
            row.status, row.error = 499, "client_disconnected"
        return response
    except ProxyError as e:
        row.status, row.error = e.status, e.code
        return surface.response(e, row.request_id, gateway.config.server.server_header)
    except asyncio.CancelledError as e:
        if not absorb(e, SHUTTING_DOWN):
            row.status, row.error = 499, "client_disconnected"
            raise
        error = NoTargetAvailable(
            "The gateway is shutting down and could not answer in time; send the request "
            "again.", code="gateway_shutting_down", headers={"Retry-After": "5"})
        row.status, row.error = error.status, error.code
        return surface.response(error, row.request_id, gateway.config.server.server_header)
    except Exception:
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                      row.request_id)
        row.status, row.error = 500, "internal_error"
        return surface.response(internal_error(row.request_id), row.request_id,
                                gateway.config.server.server_header)
    except BaseException:
        row.status, row.error = 500, "internal_error"
        raise
    finally:
        gateway.in_flight.discard(task)
        row.latency_ms = (time.perf_counter() - row.started) * 1000
        gateway.record(row, request)


#: A partial rather than a wrapping coroutine: one frame fewer on the hot path.
HANDLERS = {endpoint: partial(proxy, endpoint=endpoint) for endpoint in ENDPOINTS}
