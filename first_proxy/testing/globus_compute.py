"""A fake Globus Compute for tests: the web service and its result queue on loopback, tasks
run by the endpoint software's own engine.

The real ``globus_compute_sdk`` talks to it unchanged. :meth:`FakeComputeService.client`
returns a ``Client`` whose ``Executor`` submits over HTTP and gets results over AMQP, as from
the hosted service, and :class:`LocalEndpoint` runs the tasks in a ``ProcessPoolEngine``
from ``globus-compute-endpoint``: functions are deserialized and called exactly as on a
cluster, in processes of their own. ::

    with LocalEndpoint(tmp_path) as engine:                # a real engine (blocking)
        result = await engine.run(function, args=(1, 2))    # a task, no service at all
        async with FakeComputeService(engine) as service:  # the web service and its queue
            endpoint = service.add_endpoint()
            client = await asyncio.to_thread(service.client)

``globus-compute-endpoint`` and ``amqp-mock`` are test-only dependencies, imported when a
fake is made: importing ``first_proxy.testing`` never needs them. The SDK is synchronous;
call it through ``asyncio.to_thread``, never on the loop the fake serves on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .loopback import serve_on_loopback

if TYPE_CHECKING:
    from globus_compute_sdk import Client
    from globus_compute_sdk.serialize import ComputeSerializer
    from globus_sdk.authorizers import GlobusAuthorizer

__all__ = [
    "SOURCE_SERIALIZERS",
    "ComputeTask",
    "FakeComputeService",
    "LocalEndpoint",
    "compute_client",
    "source_serializer",
]

#: What an endpoint that accepts functions only as source text deserializes: code as plain
#: source, data as JSON. Functions pickled by reference are refused, as on a locked-down site.
SOURCE_SERIALIZERS = (
    "globus_compute_sdk.serialize.PureSourceTextInspect",
    "globus_compute_sdk.serialize.JSONData",
)


class LocalEndpoint:
    """A Globus Compute endpoint's engine, run from this process: task bytes in, result bytes out.

    Its worker processes are spawned, not forked (the test process has threads), and start
    once: keep one for a whole test session. Tasks run in ``run_dir``.
    """

    def __init__(self, run_dir: str | Path, *, workers: int = 4,
                 allowed_serializers: Iterable[str] | None = SOURCE_SERIALIZERS) -> None:
        from globus_compute_endpoint.engines import ProcessPoolEngine

        self.run_dir = Path(run_dir)
        self.endpoint_id = uuid.uuid4()
        self._engine = ProcessPoolEngine(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            allowed_serializers=list(allowed_serializers) if allowed_serializers else None)
        self._started = False

    def start(self) -> LocalEndpoint:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._engine.start(endpoint_id=self.endpoint_id, run_dir=str(self.run_dir))
        self._started = True
        return self

    def close(self) -> None:
        if self._started:
            self._engine.shutdown(block=True)
            self._started = False

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, task_id: uuid.UUID, task_buffer: str,
                result_serializers: list[str] | None = None) -> concurrent.futures.Future[bytes]:
        """Run one task as an endpoint does; the future holds the packed ``Result``."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task
        from globus_compute_endpoint.engines.base import GCFuture

        future = GCFuture(gc_task_id=task_id)
        self._engine.submit(future, messagepack.pack(Task(task_id=task_id, task_buffer=task_buffer)),
                            resource_specification={}, result_serializers=result_serializers)
        return future

    def submit(self, function: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
               *, serializer: ComputeSerializer | None = None,
               result_serializers: list[str] | None = None) -> concurrent.futures.Future[Any]:
        """Serialize ``function(*args, **kwargs)`` as the SDK does and run it here.

        The future holds the function's return value, or raises ``TaskExecutionFailed`` with
        the remote traceback, as an ``Executor``'s future would.
        """
        from globus_compute_common import messagepack
        from globus_compute_sdk.errors import TaskExecutionFailed

        serde = serializer or source_serializer()
        code = serde.pack_buffers([serde.serialize(function)])
        payload = serde.pack_buffers([serde.serialize(tuple(args)), serde.serialize(kwargs or {})])
        raw = self.execute(uuid.uuid4(), code + payload, result_serializers)
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def unpack(done: concurrent.futures.Future[bytes]) -> None:
            try:
                result = messagepack.unpack(done.result())
                if result.is_error:
                    outcome.set_exception(TaskExecutionFailed(result.data))
                else:
                    outcome.set_result(serde.deserialize(result.data))
            except Exception as e:
                outcome.set_exception(e)

        raw.add_done_callback(unpack)
        return outcome

    async def run(self, function: Any, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """:meth:`submit`, awaited."""
        return await asyncio.wrap_future(self.submit(function, args, kwargs, **options))


def source_serializer() -> ComputeSerializer:
    """The SDK's serializer with code sent as source text and data as JSON."""
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData, PureSourceTextInspect

    return ComputeSerializer(strategy_code=PureSourceTextInspect(), strategy_data=JSONData())


@dataclass
class ComputeTask:
    """One task the fake service accepted."""

    task_id: str
    endpoint_id: str
    function_id: str
    task_group_id: str
    #: The packed ``Result`` once the engine is done.
    result: bytes | None = None
    completed_at: float | None = None


@dataclass
class _Endpoint:
    online: bool = True
    #: Tasks sent while offline: the service keeps them, nothing runs them.
    waiting: list[str] = field(default_factory=list)


class FakeComputeService:
    """The Globus Compute web service (the routes the SDK's ``Client`` and ``Executor`` use)
    and its AMQP result queue, backed by a :class:`LocalEndpoint`.

    Every call must carry ``Authorization: Bearer <token>`` with a token in ``tokens``.
    Switches, changed between requests: ``fail_submit`` answers submissions with that HTTP
    status; :meth:`set_online` takes an endpoint off line (tasks sent to it wait forever,
    as the hosted service keeps them until the endpoint returns); clearing ``accepting``
    holds submissions unanswered (``held`` counts them) until it is set again.
    """

    def __init__(self, engine: LocalEndpoint, *, token: str = "compute-test-token") -> None:
        self.engine = engine
        self.token = token
        self.tokens = {token}
        self.fail_submit: int | None = None
        self.accepting = asyncio.Event()
        self.accepting.set()
        self.held = 0
        #: Function id → the ``function_code`` registered.
        self.functions: dict[str, str] = {}
        #: Task id → what became of it.
        self.tasks: dict[str, ComputeTask] = {}
        #: The number of tasks in each submission, in order: how well they were batched.
        self.submissions: list[int] = []
        self.url = ""
        self.amqp_url = ""
        self._endpoints: dict[str, _Endpoint] = {}
        self._runner: web.AppRunner | None = None
        self._broker: Any = None
        self._storage: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    # -- what tests use ---------------------------------------------------------------------

    def add_endpoint(self, *, online: bool = True) -> str:
        """A new endpoint id this service routes to the engine."""
        endpoint_id = str(uuid.uuid4())
        self._endpoints[endpoint_id] = _Endpoint(online=online)
        return endpoint_id

    def set_online(self, endpoint_id: str, online: bool) -> None:
        self._endpoints[endpoint_id].online = online

    def client(self, authorizer: GlobusAuthorizer | None = None, **options: Any) -> Client:
        """A real ``globus_compute_sdk.Client`` for this service (blocking: call it off the loop).

        ``authorizer`` defaults to this service's token; ``options`` go to ``Client``
        (``code_serialization_strategy=...``, say).
        """
        from globus_sdk import AccessTokenAuthorizer

        return compute_client(self.url, authorizer or AccessTokenAuthorizer(self.token), **options)

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> FakeComputeService:
        from amqp_mock import Storage
        from amqp_mock.amqp_server import AmqpRunner, AmqpSite

        self._loop = asyncio.get_running_loop()
        self._storage = Storage()
        self._broker = AmqpRunner(_raw_amqp_server(self._storage))
        await self._broker.setup()
        site = AmqpSite(self._broker, host="127.0.0.1", port=0)
        await site.start()
        self.amqp_url = f"amqp://guest:guest@127.0.0.1:{site.port}/"

        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        app.router.add_post("/v3/functions", self._register_function)
        app.router.add_post("/v3/endpoints/{endpoint_id}/submit", self._submit)
        app.router.add_get("/v2/endpoints/{endpoint_id}/status", self._endpoint_status)
        app.router.add_get("/v2/get_amqp_result_connection_url", self._amqp_connection_url)
        app.router.add_get("/v2/tasks/{task_id}", self._task)
        app.router.add_post("/v2/batch_status", self._batch_status)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = await serve_on_loopback(self._runner)
        return self

    async def close(self) -> None:
        for task in list(self._publishing):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._broker is not None:
            await self._broker.cleanup()
            self._broker = None

    async def __aenter__(self) -> FakeComputeService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- routes -----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return _error(401, "UNAUTHORIZED", "Invalid or expired token.")
        return await handler(request)

    async def _register_function(self, request: web.Request) -> web.Response:
        data = await request.json()
        function_id = str(uuid.uuid4())
        self.functions[function_id] = data["function_code"]
        return web.json_response({"function_uuid": function_id})

    async def _submit(self, request: web.Request) -> web.Response:
        if not self.accepting.is_set():
            self.held += 1
            try:
                await self.accepting.wait()
            finally:
                self.held -= 1
        endpoint_id = request.match_info["endpoint_id"]
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            return _error(404, "ENDPOINT_NOT_FOUND", f"Endpoint {endpoint_id} not found")
        if self.fail_submit is not None:
            return _error(self.fail_submit, "TASK_REFUSED", "The service cannot take tasks right now")
        data = await request.json()
        unknown = [f for f in data["tasks"] if f not in self.functions]
        if unknown:
            return _error(404, "FUNCTION_NOT_FOUND", f"Function {unknown[0]} not found")
        group = data.get("task_group_id") or str(uuid.uuid4())
        accepted: dict[str, list[str]] = {}
        for function_id, payloads in data["tasks"].items():
            for payload in payloads:
                task = ComputeTask(str(uuid.uuid4()), endpoint_id, function_id, group)
                self.tasks[task.task_id] = task
                accepted.setdefault(function_id, []).append(task.task_id)
                if endpoint.online:
                    self._run(task, self.functions[function_id] + payload,
                              data.get("result_serializers"))
                else:
                    endpoint.waiting.append(task.task_id)
        self.submissions.append(sum(map(len, accepted.values())))
        return web.json_response({"request_id": str(uuid.uuid4()), "task_group_id": group,
                                  "endpoint_id": endpoint_id, "tasks": accepted})

    async def _endpoint_status(self, request: web.Request) -> web.Response:
        endpoint = self._endpoints.get(request.match_info["endpoint_id"])
        if endpoint is None:
            return _error(404, "ENDPOINT_NOT_FOUND", "Endpoint not found")
        running = sum(1 for t in self.tasks.values() if t.result is None)
        return web.json_response({
            "status": "online" if endpoint.online else "offline",
            "details": {"total_workers": 1, "idle_workers": 0, "pending_tasks": len(endpoint.waiting),
                        "outstanding_tasks": running, "managers": 1}})

    async def _amqp_connection_url(self, request: web.Request) -> web.Response:
        return web.json_response({"connection_url": self.amqp_url, "queue_prefix": "tg."})

    async def _task(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return _error(404, "TASK_NOT_FOUND", "Task not found")
        return web.json_response(self._status_of(task))

    async def _batch_status(self, request: web.Request) -> web.Response:
        ids = (await request.json())["task_ids"]
        return web.json_response({"response": "batch", "results": {
            tid: self._status_of(self.tasks[tid]) for tid in ids if tid in self.tasks}})

    # -- tasks ------------------------------------------------------------------------------

    def _run(self, task: ComputeTask, buffer: str, result_serializers: list[str] | None) -> None:
        future = self.engine.execute(uuid.UUID(task.task_id), buffer, result_serializers)
        loop = self._loop
        assert loop is not None
        future.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._finished, task, done))

    def _finished(self, task: ComputeTask, done: concurrent.futures.Future[bytes]) -> None:
        from amqp_mock import Message

        task.result, task.completed_at = done.result(), time.time()
        publish = asyncio.ensure_future(self._storage.add_message_to_queue(
            f"tg.{task.task_group_id}", Message(task.result)))
        self._publishing.add(publish)
        publish.add_done_callback(self._publishing.discard)

    def _status_of(self, task: ComputeTask) -> dict[str, Any]:
        if task.result is None:
            return {"task_id": task.task_id, "status": "waiting-for-ep", "completion_t": None}
        from globus_compute_common import messagepack

        result = messagepack.unpack(task.result)
        outcome = ({"status": "failed", "exception": result.data} if result.is_error
                   else {"status": "success", "result": result.data})
        return {"task_id": task.task_id, "completion_t": str(task.completed_at), **outcome}


_client_lock = threading.Lock()


def compute_client(url: str, authorizer: GlobusAuthorizer, **options: Any) -> Client:
    """A real ``globus_compute_sdk.Client`` for the Compute web service at ``url``."""
    import globus_compute_sdk.sdk.client as client_module

    # The SDK takes its service URL from a fixed table (it ignores
    # GLOBUS_SDK_SERVICE_URL_COMPUTE): point that lookup at ``url`` while the client is made.
    with _client_lock:
        lookup = client_module.get_web_service_url
        client_module.get_web_service_url = lambda *_: url  # type: ignore[assignment]
        try:
            return client_module.Client(authorizer=authorizer, do_version_check=False, **options)
        finally:
            client_module.get_web_service_url = lookup


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _raw_amqp_server(storage: Any) -> Any:
    """An amqp-mock broker that delivers message bodies as the bytes they are.

    amqp-mock encodes every body as JSON; the SDK's result watcher wants the packed
    ``Result`` bytes the endpoint made. Only delivery differs from amqp-mock's own; nothing
    here publishes through the broker (the service puts results straight on the queue).
    """
    from amqp_mock import AmqpServer
    from amqp_mock.amqp_server._amqp_connection import AmqpConnection
    from pamqp import commands
    from pamqp.body import ContentBody
    from pamqp.header import ContentHeader

    class RawConnection(AmqpConnection):
        async def _consumer_task(self, queue_name: str, consumer_tag: str, channel_id: int) -> None:
            async for message in self._on_consume(queue_name):
                tag = self._get_delivery_tag()
                self._delivered_messages[tag] = message.id
                body = message.value
                await self._send_frame(channel_id, commands.Basic.Deliver(
                    consumer_tag=consumer_tag, delivery_tag=tag, exchange=message.exchange,
                    routing_key=message.routing_key))
                await self._send_frame(channel_id, ContentHeader(
                    body_size=len(body), properties=commands.Basic.Properties()))
                await self._send_frame(channel_id, ContentBody(body))

    class RawServer(AmqpServer):
        def __call__(self, reader: Any, writer: Any) -> AmqpConnection:
            connection = RawConnection(reader, writer, self._on_consume, self._server_properties)
            connection.on_ack(self._on_ack).on_nack(self._on_nack).on_close(self._on_close)
            self._connections.append(connection)
            return connection

        async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (its base's)
            for connection in list(self._connections):
                with contextlib.suppress(Exception):
                    await connection.close()

    return RawServer(storage, host="127.0.0.1")
