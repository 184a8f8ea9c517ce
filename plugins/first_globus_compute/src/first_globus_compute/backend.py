"""Backend ``globus_compute``: inference on HPC clusters through Globus Compute.

A call becomes one task of the registered :func:`~first_globus_compute.remote.inference`
function on the target's endpoint, which posts the body to the inference server beside it.
A whole answer comes back as the task's result; a streamed one is posted back to this
gateway's callback route while it is generated (see :mod:`.streams`).

Compute futures are never cancelled: the SDK's result watcher dies on the result of a
cancelled future it still watches. A caller that leaves is let go of instead; a stream it
leaves answers the task's next post with 404, which stops the task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from first_proxy import Backend, Call, Gateway, Status, Target, UpstreamError, UpstreamResponse
from first_proxy.keys import GATEWAY

from .executors import ClientFactory, Executors, service_client
from .failures import describe
from .settings import BACKEND, NAME, ComputeTarget, Settings, validate_target
from .streams import CALLBACK_ROUTE, MAX_POST_BYTES, End, Stream, Streams

if TYPE_CHECKING:
    from globus_compute_sdk import Executor
    from globus_compute_sdk.sdk.asynchronous.compute_future import ComputeFuture

__all__ = ["GlobusComputeBackend", "Runtime", "run_function"]

log = logging.getLogger("first_globus_compute")

#: Where a gateway keeps the Compute half's running state.
RUNTIME = f"{NAME}:compute"
#: Seconds the function waits for the gateway to take one posted part of a stream.
CALLBACK_TIMEOUT_S = 10.0
_SSE = {"Content-Type": "text/event-stream"}


@dataclass
class Runtime:
    """The Compute half of one running gateway."""

    settings: Settings
    executors: Executors
    streams: Streams = field(default_factory=Streams)
    targets: dict[str, ComputeTarget] = field(default_factory=dict)

    def target(self, target: Target) -> ComputeTarget:
        spec = self.targets.get(target.key)
        if spec is None:
            spec = self.targets[target.key] = ComputeTarget.of(target)
        return spec


class GlobusComputeBackend(Backend):
    """Dispatches ``globus_compute`` targets as Globus Compute tasks.

    ``make_client`` makes the ``globus_compute_sdk.Client`` the executors use (it is called
    in a worker thread); by default it signs in as the service account of
    ``plugins.first_globus_compute`` (``client_id`` / ``client_secret``).
    """

    name = BACKEND

    def __init__(self, make_client: ClientFactory | None = None) -> None:
        self._make_client = make_client

    def validate(self, target: Target, path: str) -> list[tuple[str, str]]:
        return validate_target(target, path)

    @contextlib.asynccontextmanager
    async def lifespan(self, gateway: Gateway) -> AsyncIterator[Runtime]:
        """The executors and streams of ``gateway``, all shut down at its end."""
        settings = Settings.of(gateway.plugin_config(NAME))
        make_client = self._make_client or functools.partial(
            service_client, settings.client_id, settings.client_secret)
        runtime = Runtime(settings, Executors(make_client))
        gateway.state[RUNTIME] = runtime
        try:
            yield runtime
        finally:
            del gateway.state[RUNTIME]
            await runtime.executors.aclose()

    async def receive(self, request: web.Request) -> web.Response:
        """The handler of ``POST CALLBACK_ROUTE``: a part of a stream, posted by its task."""
        runtime: Runtime | None = request.app[GATEWAY].state.get(RUNTIME)
        return await (runtime.streams if runtime else Streams()).handle(request)

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
        runtime: Runtime = gateway.state[RUNTIME]
        spec = runtime.target(target)
        body = call.payload(target).decode()
        if call.stream and runtime.settings.callback_url:
            return await self._stream(runtime, target, spec, call, body)
        # Nobody waits for a whole answer past the first-byte deadline: nor does the task.
        args = (call.endpoint, body, spec.api_port, _first_byte(target), None, target.api_key)
        executor, future = await self._submit(runtime, spec, args)
        try:
            result = await _within(_settled(future), _first_byte(target))
        except TimeoutError:
            raise _no_answer(target) from None
        except Exception as e:
            raise self._failed(runtime, spec, executor, e) from None
        answer = _answer(result)
        if call.stream and answer.status == 200 and answer.content_type.startswith(
                "text/event-stream"):
            # Streamed without a callback: the whole answer, as SSE, at the end.
            return UpstreamResponse(status=200, headers=_SSE, chunks=_once(answer.body or b""))
        return answer

    async def status(self, target: Target, gateway: Gateway) -> Status:
        """The endpoint's state as the Globus Compute service reports it."""
        runtime: Runtime = gateway.state[RUNTIME]
        answer = await runtime.executors.endpoint_status(runtime.target(target).endpoint)
        state = answer.get("status", "unknown")
        details = answer.get("details") or {}
        return Status(reachable=state == "online",
                      queue_depth=_number(details.get("pending_tasks")),
                      running_requests=_number(details.get("outstanding_tasks")),
                      last_error=None if state == "online" else f"the endpoint is {state}",
                      detail=details)

    # -- streaming --------------------------------------------------------------------------

    async def _stream(self, runtime: Runtime, target: Target, spec: ComputeTarget, call: Call,
                      body: str) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + target.timeouts.total
        stream = runtime.streams.open()
        stream_to = {"url": runtime.settings.callback_url + CALLBACK_ROUTE.format(stream=stream.id),
                     "secret": stream.secret, "max_bytes": MAX_POST_BYTES,
                     "timeout": CALLBACK_TIMEOUT_S}
        args = (call.endpoint, body, spec.api_port, target.timeouts.total, stream_to,
                target.api_key)
        try:
            executor, future = await self._submit(runtime, spec, args)
            future.add_done_callback(lambda done: loop.call_soon_threadsafe(
                self._stream_finished, runtime, spec, executor, stream, done))
            first = await _within(asyncio.ensure_future(stream.queue.get()), _first_byte(target))
        except TimeoutError:
            runtime.streams.close(stream)
            raise _no_answer(target) from None
        except BaseException:
            runtime.streams.close(stream)
            raise
        if isinstance(first, End):
            runtime.streams.close(stream)
            if first.error is not None:
                raise first.error
            if first.answer is not None:
                return first.answer
            return UpstreamResponse(status=200, headers=_SSE, chunks=_once(b""))
        return UpstreamResponse(status=200, headers=_SSE, chunks=_relay(stream, first, deadline),
                                close=functools.partial(runtime.streams.close, stream))

    def _stream_finished(self, runtime: Runtime, spec: ComputeTarget, executor: Executor,
                         stream: Stream, future: ComputeFuture) -> None:
        """The task is over: end its stream with the rest of the answer, or its failure."""
        if not runtime.streams.is_open(stream):
            return  # complete already, or its caller has gone
        runtime.streams.close(stream)
        try:
            result = future.result()
        except Exception as e:
            stream.end(End(error=self._failed(runtime, spec, executor, e)))
            return
        stream.end(_stream_end(stream, result))

    # -- both -------------------------------------------------------------------------------

    async def _submit(self, runtime: Runtime, spec: ComputeTarget,
                      args: tuple[Any, ...]) -> tuple[Executor, ComputeFuture]:
        try:
            return await runtime.executors.submit(spec.endpoint, spec.function, args)
        except UpstreamError:
            raise
        except Exception as e:
            raise UpstreamError(describe(e, spec.endpoint).message) from None

    def _failed(self, runtime: Runtime, spec: ComputeTarget, executor: Executor,
                error: BaseException) -> UpstreamError:
        failure = describe(error, spec.endpoint)
        if failure.replace_executor:
            runtime.executors.retire(spec.endpoint, executor)
        return UpstreamError(failure.message)


def _settled(future: ComputeFuture) -> asyncio.Future[Any]:
    """An asyncio future that follows ``future``; cancelling it leaves ``future`` alone."""
    loop = asyncio.get_running_loop()
    follower: asyncio.Future[Any] = loop.create_future()

    def copy(done: ComputeFuture) -> None:
        if follower.done():
            return
        if done.cancelled():  # the SDK drops queued tasks when an executor stops
            follower.set_exception(concurrent.futures.CancelledError())
        elif done.exception() is not None:
            follower.set_exception(done.exception())
        else:
            follower.set_result(done.result())

    future.add_done_callback(lambda done: loop.call_soon_threadsafe(copy, done))
    return follower


async def _within(future: asyncio.Future[Any], seconds: float) -> Any:
    """``future``'s result, or ``TimeoutError`` after ``seconds``.

    ``asyncio.wait`` never cancels the waiting task: the core keeps its own deadline by
    cancelling it, and two cancellations at once would pass for the caller going away.
    """
    try:
        await asyncio.wait((future,), timeout=max(seconds, 0.0))
    finally:
        if not future.done():
            future.cancel()  # a task (a queue's get) takes it in its next step
    if not future.done() or future.cancelled():
        raise TimeoutError
    return future.result()


def _answer(result: Any) -> UpstreamResponse:
    """The function's result as the upstream's answer."""
    if not isinstance(result, dict):
        raise UpstreamError("the function returned no answer (is the registered function "
                            "first-globus-compute's inference?)")
    if "error" in result:
        raise UpstreamError(str(result["error"])[:300])
    status, body = result.get("status"), result.get("body")
    if not isinstance(status, int) or not isinstance(body, str):
        raise UpstreamError("the function's answer has no status or body")
    return UpstreamResponse(status=status,
                            headers={"Content-Type": result.get("content_type") or "application/json"},
                            body=body.encode())


def _stream_end(stream: Stream, result: Any) -> End:
    """How ``result`` ends ``stream``: the bytes the callback missed go first."""
    if not isinstance(result, dict):
        return End(error=UpstreamError("the function returned no answer"))
    rest = str(result.get("body") or "").encode()
    offset = result.get("offset") if isinstance(result.get("offset"), int) else 0
    if "error" in result:
        stream.feed(offset, rest)
        return End(error=UpstreamError(str(result["error"])[:300]))
    if not stream.received and not str(result.get("content_type", "")).startswith(
            "text/event-stream"):
        try:
            return End(answer=_answer(result))
        except UpstreamError as e:
            return End(error=e)
    if not stream.feed(offset, rest):
        return End(error=UpstreamError("part of the streamed answer was lost on the way"))
    return End()


async def _relay(stream: Stream, first: bytes, deadline: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    yield first
    while True:
        if stream.queue.empty():
            item = await _within(asyncio.ensure_future(stream.queue.get()), deadline - loop.time())
        else:
            item = stream.queue.get_nowait()
        if isinstance(item, bytes):
            yield item
        elif item.error is not None:
            raise item.error
        else:
            return


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def _first_byte(target: Target) -> float:
    return min(target.timeouts.first_byte, target.timeouts.total)


def _no_answer(target: Target) -> TimeoutError:
    return TimeoutError(f"Globus Compute gave no answer within {_first_byte(target):g} s: the "
                        "endpoint may be offline, or its workers still starting")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


async def run_function(gateway: Gateway, endpoint: str, function: str, args: tuple[Any, ...],
                       time_limit: float) -> Any:
    """The result of the registered ``function(*args)`` on Compute ``endpoint``, through the
    gateway's executors; for other plugins (first_pbs_status's ``via: globus_compute``).

    Raises ``RuntimeError`` when the plugin is not running, ``TimeoutError`` after ``time_limit``
    seconds, and :class:`~first_proxy.UpstreamError` saying what failed otherwise.
    """
    runtime: Runtime | None = gateway.state.get(RUNTIME)
    if runtime is None:
        raise RuntimeError("first_globus_compute is not running in this gateway")
    try:
        executor, future = await runtime.executors.submit(endpoint, function, args)
    except UpstreamError:
        raise
    except Exception as e:
        raise UpstreamError(describe(e, endpoint).message) from None
    try:
        return await _within(_settled(future), time_limit)
    except TimeoutError:
        raise
    except Exception as e:
        failure = describe(e, endpoint)
        if failure.replace_executor:
            runtime.executors.retire(endpoint, executor)
        raise UpstreamError(failure.message) from None
