"""One Globus Compute ``Executor`` per endpoint: made on first use off the event loop, replaced
when it stops in error, shut down with its result watcher when the gateway stops.

The SDK is synchronous. Making a client fetches a token and ``Executor.shutdown`` waits, so
both run in worker threads; ``submit_to_registered_function`` only queues the task, and the
Executor's own thread sends whatever has queued up in one request (one batch).

Submissions to an endpoint are paced so that the SDK's own rate limit never makes one wait.
It counts only submissions of fewer than ``API_BURST_LIMIT`` tasks: so a batch that size
goes at once, and smaller ones go at least ``SMALL_SUBMISSION_INTERVAL_S`` apart, the tasks
that arrive meanwhile waiting to go with the next.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from first_proxy import UpstreamError

if TYPE_CHECKING:
    from globus_compute_sdk import Client, Executor
    from globus_compute_sdk.sdk.asynchronous.compute_future import ComputeFuture
    from globus_compute_sdk.serialize import ComputeSerializer

__all__ = ["ClientFactory", "Executors", "serializer", "service_client"]

#: Makes a ``globus_compute_sdk.Client``; called in a worker thread.
ClientFactory = Callable[[], "Client"]

#: The SDK's client-side rate limit: once ``API_BURST_LIMIT`` submissions of fewer tasks than
#: that went out within ``API_BURST_WINDOW_S``, it sleeps before the next, up to a second
#: more. Its defaults (4 in 16 s) add 4-5 s to every request after the fourth; these are the
#: most lenient it accepts.
API_BURST_LIMIT = 8
API_BURST_WINDOW_S = 1
#: Small submissions this far apart are at most ``API_BURST_LIMIT - 2`` in a window: the SDK
#: times one when its POST returns, later than the gateway queued it and by more when the
#: service is slow, so the margin is two rather than one.
SMALL_SUBMISSION_INTERVAL_S = API_BURST_WINDOW_S / (API_BURST_LIMIT - 2)
#: Tasks sent in one submission at most (the SDK's default).
BATCH_SIZE = 128
#: How often the result watcher hands arrived results to their futures; the SDK's 0.5 s is
#: half a second added to every answer that is not streamed.
RESULT_POLL_S = 0.05


def serializer() -> ComputeSerializer:
    """Functions go as source text; arguments and results as JSON."""
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData, PureSourceTextInspect

    return ComputeSerializer(strategy_code=PureSourceTextInspect(), strategy_data=JSONData())


def service_client(client_id: str, client_secret: str) -> Client:
    """A Compute client signed in as the service account (blocking: it fetches a token)."""
    import globus_sdk
    from globus_compute_sdk import Client
    from globus_sdk.scopes import ComputeScopes

    auth = globus_sdk.ConfidentialAppAuthClient(client_id, client_secret)
    authorizer = globus_sdk.ClientCredentialsAuthorizer(auth, ComputeScopes.all)
    return Client(authorizer=authorizer, do_version_check=False)


@functools.cache
def _executor_class() -> type[Executor]:
    from globus_compute_sdk import Executor

    class PromptExecutor(Executor):
        """The SDK's Executor, with results matched every ``RESULT_POLL_S``."""

        def _get_result_watcher(self) -> Any:
            watcher = super()._get_result_watcher()
            watcher.poll_period_s = min(watcher.poll_period_s, RESULT_POLL_S)
            return watcher

    return PromptExecutor


class Executors:
    """The executors of one gateway, by endpoint id."""

    def __init__(self, make_client: ClientFactory) -> None:
        self._make_client = make_client
        self._current: dict[str, Executor] = {}
        self._starting: dict[str, asyncio.Task[Executor]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        #: Task groups used, whose result watchers are stopped at the end.
        self._groups: set[Any] = set()
        #: Per endpoint: the tasks waiting for its next submission, when the last small one
        #: went, and the timer of the next.
        self._waiting: dict[str, list[_Waiting]] = {}
        self._last_small: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False

    async def get(self, endpoint: str) -> Executor:
        """The endpoint's executor, made now if it has none (concurrent callers share one)."""
        executor = self._current.get(endpoint)
        if executor is not None:
            return executor
        if self._closed:
            raise UpstreamError("the gateway is shutting down")
        starting = self._starting.get(endpoint)
        if starting is None:
            starting = asyncio.create_task(asyncio.to_thread(self._start, endpoint))
            self._starting[endpoint] = starting
            starting.add_done_callback(functools.partial(self._started, endpoint))
        # A caller that goes away stops waiting; the executor is still made for the others.
        await asyncio.wait([starting])
        try:
            return starting.result()
        except Exception as e:
            raise UpstreamError(f"cannot sign in to Globus Compute as the service account "
                                f"({type(e).__name__}: {e})"[:400]) from e

    async def submit(self, endpoint: str, function: str,
                     args: tuple[Any, ...]) -> tuple[Executor, ComputeFuture]:
        """Queue ``function(*args)`` for ``endpoint``: the executor and the task's future."""
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[tuple[Executor, ComputeFuture]] = loop.create_future()
        waiting = self._waiting.setdefault(endpoint, [])
        waiting.append(_Waiting(function, args, handed))
        due = self._last_small.get(endpoint, -SMALL_SUBMISSION_INTERVAL_S) + \
            SMALL_SUBMISSION_INTERVAL_S
        if len(waiting) >= API_BURST_LIMIT or loop.time() >= due:
            self._send(endpoint)
        elif endpoint not in self._timers:
            self._timers[endpoint] = loop.call_at(due, self._send, endpoint)
        return await handed

    def _send(self, endpoint: str) -> None:
        """Queue every task waiting for ``endpoint`` now, to go out as one submission."""
        loop = asyncio.get_running_loop()
        timer = self._timers.pop(endpoint, None)
        if timer is not None:
            timer.cancel()
        waiting = [w for w in self._waiting.pop(endpoint, ()) if not w.handed.done()]
        if not waiting:
            return
        if len(waiting) < API_BURST_LIMIT:
            self._last_small[endpoint] = loop.time()
        # A task of its own: every caller waits for it, and none may cancel it for the rest.
        sending = asyncio.create_task(self._queue(endpoint, waiting))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _queue(self, endpoint: str, waiting: list[_Waiting]) -> None:
        try:
            executor = await self.get(endpoint)
            try:
                futures = [executor.submit_to_registered_function(w.function, args=w.args)
                           for w in waiting]
            except RuntimeError:
                # It stopped after a failed submission and takes no more tasks: start afresh.
                self.retire(endpoint, executor)
                executor = await self.get(endpoint)
                futures = [executor.submit_to_registered_function(w.function, args=w.args)
                           for w in waiting]
        except Exception as e:
            for w in waiting:
                if not w.handed.done():
                    w.handed.set_exception(e)
            return
        for w, future in zip(waiting, futures):
            if not w.handed.done():
                w.handed.set_result((executor, future))

    def retire(self, endpoint: str, executor: Executor) -> None:
        """Stop using ``executor``: the endpoint's next task gets a new one."""
        if self._current.get(endpoint) is not executor:
            return
        del self._current[endpoint]
        self._groups.add(executor.task_group_id)
        stopping = asyncio.create_task(asyncio.to_thread(executor.shutdown, wait=False))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    async def endpoint_status(self, endpoint: str) -> dict[str, Any]:
        """The service's word on ``endpoint``: ``{"status": "online" | "offline", ...}``."""
        executor = await self.get(endpoint)
        response = await asyncio.to_thread(executor.client.get_endpoint_status, endpoint)
        return dict(response)

    async def aclose(self) -> None:
        """Shut every executor down, then the result watchers of their task groups."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for waiting in self._waiting.values():
            for w in waiting:
                if not w.handed.done():
                    w.handed.set_exception(UpstreamError("the gateway is shutting down"))
        self._waiting.clear()
        if self._sending:
            await asyncio.wait(list(self._sending))
        if self._starting:
            await asyncio.wait(list(self._starting.values()))
        executors = list(self._current.values())
        self._current.clear()
        if self._stopping:
            await asyncio.wait(list(self._stopping))
        self._groups.update(e.task_group_id for e in executors)
        await asyncio.to_thread(_shut_down, executors, self._groups - {None})

    def _start(self, endpoint: str) -> Executor:
        serde = serializer()
        return _executor_class()(
            endpoint_id=endpoint, client=self._make_client(), serializer=serde,
            result_serializers=[serde.data_serializer], batch_size=BATCH_SIZE,
            api_burst_limit=API_BURST_LIMIT, api_burst_window_s=API_BURST_WINDOW_S)

    def _started(self, endpoint: str, task: asyncio.Task[Executor]) -> None:
        self._starting.pop(endpoint, None)
        if not task.cancelled() and task.exception() is None:
            self._current[endpoint] = task.result()


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A task waiting for its endpoint's next submission, and who waits for it to be queued."""

    function: str
    args: tuple[Any, ...]
    handed: asyncio.Future[tuple[Executor, ComputeFuture]]


def _shut_down(executors: list[Executor], groups: set[Any]) -> None:
    # The SDK has no public way to stop a result watcher: left running, it keeps its AMQP
    # connection and reconnects for seconds after the service is gone.
    from globus_compute_sdk.sdk.executor import _RESULT_WATCHERS

    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)
    for group in groups:
        watcher = _RESULT_WATCHERS.get(group)
        if watcher is not None:
            watcher.shutdown(wait=True, cancel_futures=True)
