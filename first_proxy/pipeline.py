"""The request pipeline: from a call to an answer, with or without an HTTP request.

Authorization, limits, the order of targets, dispatch, failover, usage and the request-log
row, in one place: the HTTP routes are thin adapters over :func:`run`, and a batch runs each
of its lines through it the same way.

Failover happens only while nothing has reached the caller: a connection error, a timeout,
a 401, 403, 429 or 5xx, or a success that is not a JSON object moves the call to the next
target. Once a stream has begun, an upstream failure ends it with an error event. Each
attempt's outcome goes to ``gateway.health``, whose cool-downs the built-in selection reads.

A ``select_target`` implementation may refuse the call with a ProxyError of its own (a 503
saying where the model is starting, say); it reaches the caller as it is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import cast

import aiohttp

from .answer import Answer
from .errors import (
    NoTargetAvailable,
    NotFound,
    PermissionDenied,
    ProxyError,
    RateLimited,
    UpstreamError,
)
from .failures import Failure, exhausted, failure_of, looks_like_object, retry_failure
from .gateway import Gateway
from .inflight import EXPIRED, absorb
from .limits import Lease, Leases
from .streaming import next_chunk
from .types import Call, Denial, RequestRecord, Target, UpstreamResponse

__all__ = ["denial_error", "run", "shown"]

#: Upstream statuses that send the call to the next target: the target refused the gateway's
#: own credential (a configuration problem the caller cannot fix), or is busy.
_FAIL_OVER = frozenset({401, 403, 429})


def shown(name: str) -> str:
    """A caller-given name, quoted and cut short, for error messages."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def denial_error(denial: Denial) -> ProxyError:
    """The ProxyError a Denial becomes: 403 (or its own status), or 429 with Retry-After."""
    if denial.status == 429:
        headers = ({"Retry-After": str(max(1, math.ceil(denial.retry_after)))}
                   if denial.retry_after is not None else None)
        return RateLimited(denial.reason, code=denial.code, headers=headers)
    error = PermissionDenied(denial.reason, code=denial.code)
    error.status = denial.status
    if denial.status == 401:
        error.type = "authentication_error"
    elif denial.status >= 500:
        error.type = "service_unavailable"
    return error


async def run(gateway: Gateway, call: Call, row: RequestRecord,
              pin: tuple[str, str] | None = None) -> Answer:
    """Answer ``call`` from the best target that can, trying the next on failure.

    ``pin`` keeps the call on the targets of one ``(cluster, framework)``. ``row`` is filled
    in as the call goes (the caller records it once the answer is delivered). Raises a
    :class:`~first_proxy.errors.ProxyError` for every refusal and failure.
    """
    ordered = await _targets(gateway, call, row, pin)
    # Every limiter is asked; the first denial, or a limiter that fails, stops the others and
    # gives back what they hold.
    answers: list[Denial | Lease] = []
    try:
        await gateway.hooks.check_limits(answers, call.identity, call.model, call)
    except BaseException:
        await Leases(cast(list[Lease], answers)).release()
        raise
    leases = await _admitted(answers) if answers else None
    try:
        return await _forward(gateway, call, ordered, row, leases)
    except BaseException:
        if leases is not None:
            await leases.release()
        raise


async def _targets(gateway: Gateway, call: Call, row: RequestRecord,
                   pin: tuple[str, str] | None) -> Sequence[Target]:
    """The targets the caller may use for the call's model, in the order to try them."""
    name, identity = call.model, call.identity
    model = gateway.config.models.get(name)
    if model is None:
        raise NotFound(
            f"The model {shown(name)} does not exist. GET /v1/models lists the models you may use.",
            code="model_not_found", param="model")
    row.model = name
    denial = await gateway.hooks.authorize(identity, name, None)
    if denial is not None:
        raise denial_error(denial)
    candidates = model.targets
    if pin is not None:
        candidates = _pinned(gateway, name, candidates, pin)
    maintenance = gateway.maintenance
    if maintenance:
        candidates = tuple(t for t in candidates if t.cluster not in maintenance)
    allowed: list[Target] = []
    refusal: Denial | None = None
    for target in candidates:
        denial = await gateway.hooks.authorize(identity, name, target)
        if denial is None:
            allowed.append(target)
        else:
            refusal = refusal or denial
    if not allowed:
        if refusal is not None:
            raise denial_error(refusal)
        raise NoTargetAvailable(
            f"Every cluster serving {name!r} is under maintenance right now; try again later. "
            "GET /resource_server/status says until when.", code="maintenance")
    ordered = await gateway.hooks.select_target(name, allowed, gateway.statuses)
    if not ordered:
        raise NoTargetAvailable(
            f"No target for {name!r} is available right now. Try again in a minute; "
            "GET /status shows which targets are up.")
    return ordered


def _pinned(gateway: Gateway, name: str, candidates: Sequence[Target],
            pin: tuple[str, str]) -> tuple[Target, ...]:
    pinned = tuple(t for t in candidates if (t.cluster, t.framework) == pin)
    if not pinned:
        places = ", ".join(sorted({f"/resource_server/{t.cluster}/{t.framework}/v1"
                                   for t in candidates}))
        raise NotFound(
            f"The model {name!r} is not served on {pin[0]}/{pin[1]}; it is served under "
            f"{places}. Use one of those, or /v1 to let the gateway choose.",
            code="model_not_found", param="model")
    message = gateway.maintenance.get(pin[0])
    if message is not None:
        raise NoTargetAvailable(f"{pin[0]} is under maintenance: {message}",
                                code="maintenance", headers={"Retry-After": "300"})
    return pinned


async def _admitted(answers: list[Denial | Lease]) -> Leases:
    """The leases the limiters took; a denial's error, once the leases before it are given
    back, if the last answer is one."""
    if isinstance(answers[-1], Denial):
        await Leases(cast(list[Lease], answers[:-1])).release()
        raise denial_error(answers[-1])
    return Leases(cast(list[Lease], answers))


async def _forward(gateway: Gateway, call: Call, ordered: Sequence[Target], row: RequestRecord,
                   leases: Leases | None) -> Answer:
    task = asyncio.current_task(gateway.loop)
    assert task is not None
    in_flight, health = gateway.in_flight, gateway.health
    failures: list[Failure] = []
    for target in ordered:
        row.attempts += 1
        row.target = target.name
        upstream: UpstreamResponse | None = None
        first = b""
        in_flight.expire_in(task, min(target.timeouts.first_byte, target.timeouts.total))
        health.began(target)
        try:
            try:
                upstream = await gateway.backend(target).dispatch(target, call, gateway)
                retry = upstream.status in _FAIL_OVER or upstream.status >= 500
                if upstream.chunks is not None and not retry:
                    first = await next_chunk(upstream.chunks)
            finally:
                in_flight.clear(task)
        except asyncio.CancelledError as e:
            health.ended(target)
            if upstream is not None:
                await upstream.aclose()
            if not absorb(e, EXPIRED):
                raise
            _failed(gateway, call, failures, Failure(target, "timeout", "no answer in time"))
            continue
        except (TimeoutError, UpstreamError, aiohttp.ClientError, StopAsyncIteration) as e:
            health.ended(target)
            if upstream is not None:
                await upstream.aclose()
            _failed(gateway, call, failures, failure_of(target, e))
            continue
        except BaseException:
            health.ended(target)
            if upstream is not None:
                await upstream.aclose()
            raise
        if not retry and upstream.chunks is None and upstream.status < 400:
            retry = not looks_like_object(upstream.body)
        if retry:
            health.ended(target)
            await upstream.aclose()
            _failed(gateway, call, failures, retry_failure(target, upstream))
            continue
        health.succeeded(target)
        if upstream.chunks is None:
            health.ended(target)  # the whole answer is here; a stream's answer ends it
        else:
            row.ttft_ms = (time.perf_counter() - row.started) * 1000
        answer = Answer(gateway, call, target, upstream, first, row, leases)
        if leases is not None and not answer.streaming:
            await leases.settle(answer.usage)
        return answer
    raise exhausted(call.model, failures)


def _failed(gateway: Gateway, call: Call, failures: list[Failure], failure: Failure) -> None:
    """Count a failed attempt; all but a busy target's (429) count towards its cool-down."""
    failures.append(failure)
    gateway.metrics.upstream_error(call.model, failure.target.name, failure.kind)
    if failure.kind != "busy":
        gateway.health.failed(failure.target)
