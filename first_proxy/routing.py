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
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from .errors import (
    AuthenticationError,
    NoTargetAvailable,
    NotFound,
    PermissionDenied,
    ProxyError,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    error_body,
    internal_error,
)
from .gateway import Gateway
from .inflight import EXPIRED, SHUTTING_DOWN, absorb
from .keys import GATEWAY
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


def shown(name: str) -> str:
    """A caller-given name, quoted and cut short, for error messages."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def denial_error(denial: Denial) -> ProxyError:
    """The ProxyError a Denial becomes: 403, or 429 with Retry-After."""
    if denial.status == 429:
        headers = ({"Retry-After": str(max(1, round(denial.retry_after)))}
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
        gateway.record(row, request)


async def _prepare(request: web.Request, gateway: Gateway, endpoint: str,
                   row: RequestRecord) -> tuple[Call, Sequence[Target]]:
    """Who calls, what they ask, whether they may: the call and the targets to try, in order."""
    identity = await authenticate(request, gateway)
    row.user = identity.user_id
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(
            f"The request body is larger than the {gateway.config.server.max_body_bytes} bytes "
            "this gateway accepts. Send less, or ask the administrator to raise "
            "server.max_body_bytes.") from None
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
        candidates = tuple(t for t in candidates if (t.cluster, t.framework) == pin)
        if not candidates:
            raise NotFound(
                f"The model {name!r} is not served on {pin[0]}/{pin[1]}. Drop the cluster and "
                "framework from the path to let the gateway choose.", code="model_not_found",
                param="model")
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
                # Busy or failing: the next target may do better.
                retry = upstream.status == 429 or upstream.status >= 500
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
        if retry:
            failures.append(_Failure(
                target, "busy" if upstream.status == 429 else "status",
                f"HTTP {upstream.status}: {target.redact(_upstream_message(upstream.body))}"))
            await upstream.aclose()
            gateway.metrics.upstream_error(call.model, target.name, failures[-1].kind)
            continue
        if upstream.chunks is not None:
            return await _stream(request, gateway, call, target, upstream, first, row, started,
                                 task)
        return _answer(upstream, target, row)
    raise _exhausted(call.model, failures)


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


def _answer(upstream: UpstreamResponse, target: Target, row: RequestRecord) -> web.Response:
    body = upstream.body or b""
    if upstream.status >= 400:
        body = _as_openai_error(body, upstream.status)
        content_type = "application/json"
    else:
        usage = usage_of(body)
        if usage:
            _count(row, usage)
        content_type = upstream.content_type or "application/json"
    return web.Response(body=body, status=upstream.status, headers={
        "Content-Type": content_type, "X-First-Target": target.name,
        "X-Request-Id": row.request_id})


async def _stream(request: web.Request, gateway: Gateway, call: Call, target: Target,
                  upstream: UpstreamResponse, first: bytes, row: RequestRecord,
                  started: float, task: asyncio.Task) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)  # copied: a multidict copies fastest
    headers = response.headers
    headers["X-First-Target"] = target.name
    headers["X-Request-Id"] = call.request_id
    tee = UsageTee(hide_usage_chunk=call.usage_injected)
    chunks, at_eof = upstream.chunks, upstream.at_eof
    assert chunks is not None
    try:
        await response.prepare(request)
        row.ttft_ms = (time.perf_counter() - started) * 1000
        error: ProxyError | None = None
        gateway.in_flight.expire_in(task, _remaining(started, target))
        try:
            data = tee.feed(first)
            while True:
                if at_eof is not None and at_eof():
                    # The upstream has said everything: its last bytes and the end of the
                    # answer go out in one write.
                    await response.write_eof(data + tee.flush())
                    break
                if data:
                    await response.write(data)
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    data = tee.flush()
                    if data:
                        await response.write(data)
                    break
                data = tee.feed(chunk)
        except asyncio.CancelledError as e:
            if not absorb(e, EXPIRED):
                raise
            error = _too_long(target)
        except (TimeoutError, aiohttp.ClientError, UpstreamError) as e:
            error = _too_long(target) if isinstance(e, TimeoutError) else UpstreamError(
                f"target {target.name!r} failed in the middle of the answer: "
                f"{_failure(target, e).message}")
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


def _remaining(started: float, target: Target) -> float:
    """Seconds left of the target's total timeout."""
    return target.timeouts.total - (time.perf_counter() - started)


def _count(row: RequestRecord, usage: dict) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    row.prompt_tokens = prompt if isinstance(prompt, int) else None
    row.completion_tokens = completion if isinstance(completion, int) else None


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}


def _upstream_message(body: bytes | None) -> str:
    if not body:
        return "no details"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip() or "no details"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:300]
        for key in ("message", "detail", "error"):
            if isinstance(data.get(key), str):
                return data[key][:300]
    return body[:300].decode("utf-8", "replace")


def _as_openai_error(body: bytes, status: int) -> bytes:
    """An upstream's error body in OpenAI's shape (vLLM, for one, puts ``message`` on top)."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return body
        type_ = data.get("type") if isinstance(data.get("type"), str) else None
        code = data.get("code")
    else:
        type_ = code = None
    return error_body(_upstream_message(body), type_ or _STATUS_TYPES.get(status, "api_error"),
                      code if isinstance(code, (str, int)) else status)
