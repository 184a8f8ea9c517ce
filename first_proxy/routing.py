"""The request path: identify, check, choose targets, dispatch, fail over, answer, log.

Failover happens only while nothing has reached the caller: a connection error, a timeout,
a 429 or a 5xx moves the call to the next target. Once a stream has started, an upstream
failure ends it with an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import HttpVersion11, hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from .errors import (
    AuthenticationError,
    BadRequest,
    ExpectationFailed,
    NoTargetAvailable,
    NotFound,
    PermissionDenied,
    ProxyError,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    error_body,
    internal_error,
)
from .gateway import Gateway
from .inflight import EXPIRED, SHUTTING_DOWN, absorb
from .keys import GATEWAY, IDENTITY
from .requestlog import RequestRecord
from .streaming import SSE_HEADERS, UsageTee, next_chunk, sse_error, usage_of
from .types import Call, Denial, Identity, Target, UpstreamResponse
from .validation import parse_request

__all__ = ["authenticate", "denial_error", "proxy", "request_id", "shown"]

log = logging.getLogger("first_proxy")

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Request ids made here: random per process, then counted (32 hex digits, like a UUID's).
_ID_PREFIX = os.urandom(8).hex()
_id_numbers = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` if it is safe to echo and log, else a new id."""
    given = request.headers.get("X-Request-Id")
    if given is not None and _SAFE_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_id_numbers):016x}"


async def authenticate(request: web.Request, gateway: Gateway) -> Identity:
    """The caller's identity, or a 401 that says how to authenticate."""
    identity = await gateway.hooks.authenticate(request)
    if identity is not None:
        return identity
    header = request.headers.get("Authorization")
    if header is None:
        raise AuthenticationError(
            "No credentials were sent. Send your key or access token as "
            "'Authorization: Bearer <token>'.", code="missing_credentials")
    if header.partition(" ")[0].lower() != "bearer":
        raise AuthenticationError(
            "The Authorization header must read 'Bearer <token>'.", code="invalid_authorization")
    raise AuthenticationError(
        "The key or access token was not accepted: it is unknown, expired or revoked. "
        "Check it, or get a new one from your gateway administrator.")


async def read_body(request: web.Request, gateway: Gateway) -> bytes:
    """The request body, within ``server.max_body_bytes`` and ``server.body_timeout``; a 4xx
    that says what is wrong otherwise (too large, too slow, or not the encoding it claims)."""
    server = gateway.config.server
    task = asyncio.current_task(gateway.loop)
    assert task is not None
    gateway.in_flight.expire_in(task, server.body_timeout)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(gateway) from None
    except asyncio.CancelledError as e:
        if not absorb(e, EXPIRED):
            raise
        error: ProxyError = RequestTimeout(
            f"The request body did not arrive within {server.body_timeout:g} s; send it "
            "again.")
    except RequestPayloadError:
        encoding = request.headers.get("Content-Encoding")
        error = BadRequest(
            f"The request body cannot be read as its Content-Encoding ({shown(encoding)}) says; "
            "send it uncompressed, or compressed as announced." if encoding else
            "The request body is malformed (a broken chunked encoding); send it again.",
            code="invalid_body")
    finally:
        gateway.in_flight.clear(task)
    # The rest of the body stays unread: the answer closes the connection.
    request.content.feed_eof()
    error.close_connection = True
    raise error


def _too_large(gateway: Gateway) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is larger than the {gateway.config.server.max_body_bytes} bytes this "
        "gateway accepts. Send less, or ask the administrator to raise server.max_body_bytes.")


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only once the declared size and the credential pass,
    so that a body that would be refused is never sent."""
    gateway = request.app[GATEWAY]
    try:
        _check_expectation(request)
        size = request.content_length
        if size is not None and size > gateway.config.server.max_body_bytes:
            raise _too_large(gateway)
        request[IDENTITY] = await authenticate(request, gateway)
    except ProxyError as e:
        e.close_connection = True  # the body may follow anyway; it is not read
        return e.response(request_id(request))
    await _continue(request)
    return None


async def expect_no_body(request: web.Request) -> web.StreamResponse | None:
    """``Expect`` on the routes that read no body: ``100-continue`` is answered at once, as
    aiohttp does, and any other expectation gets a 417 in OpenAI's shape, not aiohttp's
    plain text."""
    try:
        _check_expectation(request)
    except ProxyError as e:
        e.close_connection = True
        return e.response(request_id(request))
    await _continue(request)
    return None


def _check_expectation(request: web.Request) -> None:
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        raise ExpectationFailed("Only 'Expect: 100-continue' is understood; leave out the "
                                "Expect header.")


async def _continue(request: web.Request) -> None:
    if request.version >= HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not begun


def shown(name: str) -> str:
    """A caller-given name, quoted and cut short, for error messages."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def denial_error(denial: Denial) -> ProxyError:
    """The ProxyError a Denial becomes: 403, or 429 with Retry-After."""
    if denial.status == 429:
        headers = ({"Retry-After": str(max(1, math.ceil(denial.retry_after)))}
                   if denial.retry_after is not None else None)
        return RateLimited(denial.reason, code=denial.code, headers=headers)
    error = PermissionDenied(denial.reason, code=denial.code)
    error.status = denial.status
    return error


async def proxy(request: web.Request, endpoint: str) -> web.StreamResponse:
    """Answer one inference request on ``endpoint`` (``chat/completions``, ...).

    Every failure is answered here, in OpenAI's shape, and every request leaves a log row.
    """
    gateway = request.app[GATEWAY]
    started = time.perf_counter()
    row = RequestRecord(time.time(), request_id(request), endpoint)
    # Given the loop, current_task() skips finding the running loop, a system call (getpid).
    task = asyncio.current_task(gateway.loop)
    assert task is not None
    gateway.in_flight.add(task)
    try:
        call, ordered = await _prepare(request, gateway, endpoint, row)
        response = await _forward(request, gateway, call, ordered, row, started, task)
        row.status = row.status or response.status
        return response
    except ProxyError as e:
        row.status, row.error = e.status, e.code
        return e.response(row.request_id)
    except asyncio.CancelledError as e:
        if not absorb(e, SHUTTING_DOWN):
            row.status, row.error = 499, "client_disconnected"
            raise
        error = NoTargetAvailable(
            "The gateway is shutting down and could not answer in time; send the request "
            "again.", code="gateway_shutting_down", headers={"Retry-After": "5"})
        row.status, row.error = error.status, error.code
        return error.response(row.request_id)
    except Exception:
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                      row.request_id)
        row.status, row.error = 500, "internal_error"
        return internal_error(row.request_id).response(row.request_id)
    except BaseException:
        row.status, row.error = 500, "internal_error"
        raise
    finally:
        gateway.in_flight.discard(task)
        row.latency_ms = (time.perf_counter() - started) * 1000
        gateway.record(row)


async def _prepare(request: web.Request, gateway: Gateway, endpoint: str,
                   row: RequestRecord) -> tuple[Call, Sequence[Target]]:
    """Who calls, what they ask, whether they may: the call and the targets to try, in order."""
    identity = request.get(IDENTITY) or await authenticate(request, gateway)
    row.user = identity.user_id
    raw = await read_body(request, gateway)
    body = parse_request(raw, endpoint)
    name: str = body["model"]
    model = gateway.model(name)
    if model is None:
        raise NotFound(
            f"The model {shown(name)} does not exist. GET /v1/models lists the models you may use.",
            code="model_not_found", param="model")
    row.model = name
    denial = await gateway.hooks.authorize(identity, name, None)
    if denial is None:
        denial = await gateway.hooks.check_limits(identity, name)
    if denial is not None:
        raise denial_error(denial)

    candidates = model.targets
    pin = request.match_info.get("cluster"), request.match_info.get("framework")
    if pin[0] is not None:
        pinned = tuple(t for t in candidates if (t.cluster, t.framework) == pin)
        if not pinned:
            places = ", ".join(sorted({f"/resource_server/{t.cluster}/{t.framework}/v1"
                                       for t in candidates}))
            raise NotFound(
                f"The model {name!r} is not served on {pin[0]}/{pin[1]}; it is served under "
                f"{places}. Use one of those, or /v1 to let the gateway choose.",
                code="model_not_found", param="model")
        candidates = pinned
    allowed: list[Target] = []
    refusal: Denial | None = None
    for target in candidates:
        denial = await gateway.hooks.authorize(identity, name, target)
        if denial is None:
            allowed.append(target)
        else:
            refusal = refusal or denial
    if not allowed:
        raise denial_error(refusal) if refusal else NoTargetAvailable(f"{name!r} has no target")
    ordered = await gateway.hooks.select_target(name, allowed, gateway.statuses)
    if ordered is None:
        ordered = allowed
    if not ordered:
        raise NoTargetAvailable(
            f"No target for {name!r} is available right now. Try again in a minute; "
            "GET /status shows which targets are up.")

    call = Call(endpoint=endpoint, model=name, body=body, raw=raw,
                stream=body.get("stream") is True, identity=identity,
                request_id=row.request_id)
    row.stream = call.stream
    if gateway.config.request_log.include_prompts:
        row.prompt = raw.decode("utf-8", "replace")
    return call, ordered


@dataclass(slots=True)
class _Failure:
    target: Target
    kind: str  # "connect", "timeout", "busy", "status", "empty"
    message: str


async def _forward(request: web.Request, gateway: Gateway, call: Call, ordered: Sequence[Target],
                   row: RequestRecord, started: float, task: asyncio.Task) -> web.StreamResponse:
    failures: list[_Failure] = []
    for target in ordered:
        row.attempts += 1
        row.target = target.name
        upstream: UpstreamResponse | None = None
        first = b""
        gateway.in_flight.expire_in(task, min(target.timeouts.first_byte, target.timeouts.total))
        try:
            try:
                upstream = await gateway.hooks.dispatch(target, call)
                if upstream is None:
                    raise UpstreamError(f"no plugin dispatched backend {target.backend!r}")
                # Busy, failing, or refusing the gateway's own credential: the next
                # target may do better.
                retry = upstream.status in _FAIL_OVER or upstream.status >= 500
                if upstream.chunks is not None and not retry:
                    first = await next_chunk(upstream.chunks)
            finally:
                gateway.in_flight.clear(task)
        except asyncio.CancelledError as e:
            if upstream is not None:
                await upstream.aclose()
            if not absorb(e, EXPIRED):
                raise
            failures.append(_Failure(target, "timeout", "no answer in time"))
            gateway.metrics.upstream_error(call.model, target.name, "timeout")
            continue
        except (TimeoutError, UpstreamError, aiohttp.ClientError, StopAsyncIteration) as e:
            if upstream is not None:
                await upstream.aclose()
            failures.append(_failure(target, e))
            gateway.metrics.upstream_error(call.model, target.name, failures[-1].kind)
            continue
        except BaseException:
            if upstream is not None:
                await upstream.aclose()
            raise
        if not retry and upstream.chunks is None and upstream.status < 400:
            retry = not _looks_like_object(upstream.body)
        if retry:
            failures.append(_retry_failure(target, upstream))
            await upstream.aclose()
            gateway.metrics.upstream_error(call.model, target.name, failures[-1].kind)
            continue
        if upstream.chunks is not None:
            return await _stream(request, gateway, call, target, upstream, first, row, started,
                                 task)
        return _answer(gateway, call, upstream, target, row)
    raise _exhausted(call.model, failures)


#: Upstream statuses that send the call to the next target: the target refused the gateway's
#: own credential (a configuration problem the caller cannot fix), or is busy.
_FAIL_OVER = frozenset({401, 403, 429})


def _retry_failure(target: Target, upstream: UpstreamResponse) -> _Failure:
    status = upstream.status
    if status == 429:
        return _Failure(target, "busy", f"HTTP 429: {target.redact(_upstream_message(upstream.body))}")
    if status in (401, 403):
        return _Failure(target, "credential", f"HTTP {status}: the target refused the gateway's "
                                              "credential")
    if status < 400:
        return _Failure(target, "invalid", f"HTTP {status} with an answer that is not a JSON "
                                           "object")
    return _Failure(target, "status",
                    f"HTTP {status}: {target.redact(_upstream_message(upstream.body))}")


def _looks_like_object(body: bytes | None) -> bool:
    """Whether a successful answer is a JSON object: an HTML page from a proxy in front of the
    upstream, a bare string or a cut-off body is the target failing. Only its ends are looked
    at: an embeddings answer can be megabytes, and the caller's client parses it anyway."""
    body = body or b""
    return body[:64].lstrip().startswith(b"{") and body[-64:].rstrip().endswith(b"}")


def _failure(target: Target, error: BaseException) -> _Failure:
    if isinstance(error, TimeoutError):
        return _Failure(target, "timeout", "no answer in time")
    if isinstance(error, StopAsyncIteration):
        return _Failure(target, "empty", "the stream ended before its first event")
    message = error.message if isinstance(error, ProxyError) else (str(error) or type(error).__name__)
    return _Failure(target, "connect", target.redact(message))


def _exhausted(model: str, failures: list[_Failure]) -> ProxyError:
    summary = "; ".join(f"{f.target.name}: {f.message}" for f in failures)
    kinds = {f.kind for f in failures}
    if kinds == {"timeout"}:
        return UpstreamTimeout(
            f"Every target for {model!r} timed out ({summary}). Try again later, or ask for "
            "fewer tokens.")
    if kinds == {"busy"}:
        return RateLimited(f"Every target for {model!r} is busy ({summary}). Retry shortly.",
                           code="upstream_busy", headers={"Retry-After": "5"})
    return UpstreamError(
        f"No target for {model!r} could answer ({summary}). Try again later; if this persists, "
        "tell your gateway administrator.")


def _answer(gateway: Gateway, call: Call, upstream: UpstreamResponse, target: Target,
            row: RequestRecord) -> web.Response:
    if upstream.status >= 400:
        body = _as_openai_error(upstream, call, target)
        content_type = "application/json"
    else:
        body = upstream.body or b""
        usage = usage_of(body)
        if usage:
            _count(row, usage)
        content_type = upstream.content_type or "application/json"
    headers = {"Content-Type": content_type, "X-Request-Id": row.request_id}
    if gateway.config.server.expose_target:
        headers["X-First-Target"] = target.name
    return web.Response(body=body, status=upstream.status, headers=headers)


async def _stream(request: web.Request, gateway: Gateway, call: Call, target: Target,
                  upstream: UpstreamResponse, first: bytes, row: RequestRecord,
                  started: float, task: asyncio.Task) -> web.StreamResponse:
    headers = {**SSE_HEADERS, "X-Request-Id": call.request_id}
    if gateway.config.server.expose_target:
        headers["X-First-Target"] = target.name
    response = web.StreamResponse(headers=headers)
    tee = UsageTee(hide_usage_chunk=call.usage_injected)
    assert upstream.chunks is not None
    try:
        await response.prepare(request)
        row.ttft_ms = (time.perf_counter() - started) * 1000
        error: ProxyError | None = None
        gateway.in_flight.expire_in(task, _remaining(started, target))
        try:
            await _write(response, tee.feed(first))
            async for chunk in upstream.chunks:
                await _write(response, tee.feed(chunk))
            await _write(response, tee.flush())
        except asyncio.CancelledError as e:
            if not absorb(e, EXPIRED):
                raise
            error = _too_long(target)
        except (TimeoutError, aiohttp.ClientError, UpstreamError) as e:
            error = _too_long(target) if isinstance(e, TimeoutError) else UpstreamError(
                f"The target {target.name!r} broke off in the middle of the answer; send the "
                "request again.")
        finally:
            gateway.in_flight.clear(task)
        if error is not None:
            row.error = error.code
            gateway.metrics.upstream_error(call.model, target.name, "midstream")
            await response.write(sse_error(error))
        await response.write_eof()
    except ConnectionResetError:
        row.status, row.error = 499, "client_disconnected"
    except asyncio.CancelledError as e:
        if not absorb(e, SHUTTING_DOWN):
            raise
        row.error = "gateway_shutting_down"
        with contextlib.suppress(ConnectionResetError):
            await response.write(sse_error(NoTargetAvailable(
                "The gateway is shutting down and could not finish this answer; send the "
                "request again.", code="gateway_shutting_down")))
            await response.write_eof()
    finally:
        await upstream.aclose()
        if tee.usage:
            _count(row, tee.usage)
    return response


def _too_long(target: Target) -> UpstreamTimeout:
    return UpstreamTimeout(f"target {target.name!r} took longer than its total timeout "
                           f"({target.timeouts.total:g} s); the answer is cut short.")


async def _write(response: web.StreamResponse, data: bytes) -> None:
    if data:
        await response.write(data)


def _remaining(started: float, target: Target) -> float:
    """Seconds left of the target's total timeout."""
    return target.timeouts.total - (time.perf_counter() - started)


def _count(row: RequestRecord, usage: dict) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    row.prompt_tokens = prompt if isinstance(prompt, int) else None
    row.completion_tokens = completion if isinstance(completion, int) else None


#: OpenAI's error types by status; an upstream's own type is kept only if it is one of them.
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
                 413: "invalid_request_error", 422: "invalid_request_error",
                 429: "rate_limit_error"}
_OPENAI_TYPES = frozenset({*_STATUS_TYPES.values(), "api_error", "server_error",
                           "timeout_error"})
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _upstream_error(body: bytes | None) -> tuple[str, object, object]:
    """An upstream error body's message, type and code, from OpenAI's shape or vLLM's (which
    puts them on top), or the start of the body when it is neither."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        found = inner if isinstance(inner, dict) else data
        for key in ("message", "detail", "error"):
            if isinstance(found.get(key), str):
                return found[key][:300], found.get("type"), found.get("code")
        return "no details", found.get("type"), found.get("code")
    text = (body or b"")[:300].decode("utf-8", "replace").strip()
    return text or "no details", None, None


def _upstream_message(body: bytes | None) -> str:
    return _upstream_error(body)[0]


def _as_openai_error(upstream: UpstreamResponse, call: Call, target: Target) -> bytes:
    """An upstream's error in OpenAI's shape: an OpenAI type, a string code (or null), and the
    gateway's model name where the upstream named its own."""
    message, type_, code = _upstream_error(upstream.body)
    if target.upstream_model != call.model:
        message = message.replace(target.upstream_model, call.model)
    type_ = _STATUS_TYPES.get(upstream.status) or (
        type_ if type_ in _OPENAI_TYPES else "api_error")
    if not (isinstance(code, str) and _CODE.fullmatch(code)):
        code = None
    return error_body(target.redact(message), str(type_), code)
