"""The remote functions as an endpoint runs them: serialized by the real globus-compute
serializer (source text, JSON), deserialized and called by the endpoint software's own
engine in worker processes of their own, in front of the reference upstream (for vLLM)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

import orjson
import pytest
from aiohttp import web
from first_globus_compute import remote
from first_globus_compute.executors import serializer
from first_globus_compute.streams import CALLBACK_ROUTE, Streams
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.serialize import ComputeSerializer
from globus_compute_support import JSON_RESULTS, MODEL, port_of

from first_proxy.testing import ReferenceUpstream, eventually, serve_on_loopback
from first_proxy.testing.globus_compute import LocalEndpoint


async def run(engine: LocalEndpoint, function: Any, *args: Any) -> Any:
    """``function(*args)`` on the engine, as the gateway's executor sends it."""
    return await engine.run(function, args, serializer=serializer(),
                            result_serializers=JSON_RESULTS)


def chat(text: str, **extra: Any) -> str:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], **extra})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Callback:
    """The gateway's callback route, alone on loopback, with one stream open."""

    def __init__(self) -> None:
        self.streams = Streams()
        self.stream = self.streams.open()
        self.first_post = asyncio.Event()
        self.on_first_post: Any = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    def target(self, **changes: Any) -> dict[str, Any]:
        return {"url": self.url + CALLBACK_ROUTE.format(stream=self.stream.id),
                "secret": self.stream.secret, "max_bytes": 65536, "timeout": 5, **changes}

    async def received(self) -> bytes:
        parts = []
        while not self.stream.queue.empty():
            item = self.stream.queue.get_nowait()
            if isinstance(item, bytes):
                parts.append(item)
        return b"".join(parts)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self.first_post.is_set():
            self.first_post.set()
            if self.on_first_post is not None:
                await self.on_first_post()
        return await self.streams.handle(request)

    async def __aenter__(self) -> Callback:
        app = web.Application()
        app.router.add_post(CALLBACK_ROUTE, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = await serve_on_loopback(self._runner)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def events(sse: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in sse.split(b"\n")
            if line.startswith(b"data: {")]


# -- whole answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "body", "check"), [
    ("chat/completions", chat("hello from the cluster"),
     lambda a: a["choices"][0]["message"]["content"] == "hello from the cluster"),
    ("completions", json.dumps({"model": MODEL, "prompt": "one two three"}),
     lambda a: a["choices"][0]["text"] == "one two three"),
    ("embeddings", json.dumps({"model": MODEL, "input": ["a", "b"]}),
     lambda a: [len(d["embedding"]) for d in a["data"]] == [16, 16]),
])
async def test_inference_answers_each_endpoint(compute_engine: LocalEndpoint,
                                               reference_upstream: ReferenceUpstream,
                                               endpoint: str, body: str, check: Any) -> None:
    result = await run(compute_engine, remote.inference, endpoint, body,
                       port_of(reference_upstream), 10.0)
    assert result["status"] == 200
    assert result["content_type"].startswith("application/json")
    assert check(json.loads(result["body"]))
    assert reference_upstream.received[-1].path == f"/v1/{endpoint}"


async def test_inference_passes_an_error_status_back(compute_engine: LocalEndpoint,
                                                     reference_upstream: ReferenceUpstream) -> None:
    body = json.dumps({"model": "not-served", "messages": [{"role": "user", "content": "x"}]})
    result = await run(compute_engine, remote.inference, "chat/completions", body,
                       port_of(reference_upstream), 10.0)
    assert result["status"] == 404
    assert "does not exist" in json.loads(result["body"])["message"]


async def test_inference_sends_the_targets_key(compute_engine: LocalEndpoint) -> None:
    async with ReferenceUpstream(api_key="sk-node-key") as upstream:
        refused = await run(compute_engine, remote.inference, "chat/completions", chat("x"),
                            port_of(upstream), 10.0)
        accepted = await run(compute_engine, remote.inference, "chat/completions", chat("x"),
                             port_of(upstream), 10.0, None, "sk-node-key")
    assert (refused["status"], accepted["status"]) == (401, 200)


async def test_inference_says_when_the_server_is_down(compute_engine: LocalEndpoint) -> None:
    port = closed_port()
    result = await run(compute_engine, remote.inference, "chat/completions", chat("x"), port, 5.0)
    assert result == {"error": f"the inference server on port {port} does not answer "
                               "([Errno 111] Connection refused)"}


async def test_inference_has_its_own_timeout(compute_engine: LocalEndpoint) -> None:
    async with ReferenceUpstream(hang=True) as upstream:
        result = await run(compute_engine, remote.inference, "chat/completions", chat("x"),
                           port_of(upstream), 0.5)
    assert result == {"error": f"the inference server on port {port_of(upstream)} does not "
                               "answer (timed out)"}


async def test_inference_refuses_a_path_that_is_not_an_api(compute_engine: LocalEndpoint,
                                                           reference_upstream: ReferenceUpstream
                                                           ) -> None:
    result = await run(compute_engine, remote.inference, "../admin", chat("x"),
                       port_of(reference_upstream), 5.0)
    assert result == {"error": "not an inference API path: '../admin'"}
    assert not reference_upstream.received


async def test_a_failing_task_comes_back_with_its_traceback(compute_engine: LocalEndpoint) -> None:
    with pytest.raises(TaskExecutionFailed) as caught:
        await run(compute_engine, remote.inference, "chat/completions", chat("x"), "no port", 5.0)
    assert "ValueError: invalid literal for int()" in caught.value.remote_data


async def test_a_result_over_the_endpoints_limit_fails(compute_engine: LocalEndpoint) -> None:
    # The reference upstream repeats each prompt (up to 8,192 characters): over 10 MiB out.
    async with ReferenceUpstream() as upstream:
        body = json.dumps({"model": MODEL, "prompt": ["word " * 1638] * 1400})
        with pytest.raises(TaskExecutionFailed) as caught:
            await run(compute_engine, remote.inference, "completions", body, port_of(upstream), 30.0)
    assert caught.value.remote_data.startswith("MaxResultSizeExceeded(")


# -- streamed answers -------------------------------------------------------------------------


async def test_chunks_reach_the_gateway_while_the_function_runs(
        compute_engine: LocalEndpoint) -> None:
    async with ReferenceUpstream(chunk_delay=0.1) as upstream, Callback() as callback:
        seen: dict[str, Any] = {}

        async def look() -> None:  # at the first post: is the answer still being generated?
            seen["upstream_active"] = upstream.active
            seen["task_done"] = task.done()

        callback.on_first_post = look
        task = asyncio.ensure_future(run(
            compute_engine, remote.inference, "chat/completions",
            chat("one two three four five", stream=True), port_of(upstream), 10.0,
            callback.target()))
        result = await task
        streamed = await callback.received()
    assert seen == {"upstream_active": 1, "task_done": False}
    assert result == {"status": 200, "content_type": "text/event-stream", "offset": len(streamed),
                      "body": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events(streamed)) == \
        "one two three four five"
    assert streamed.endswith(b"data: [DONE]\n\n")
    assert callback.stream.ended and not callback.streams.is_open(callback.stream)


async def test_what_waits_goes_in_one_post_of_limited_size(compute_engine: LocalEndpoint) -> None:
    async with ReferenceUpstream() as upstream, Callback() as callback:
        posts: list[int] = []
        handle = callback.streams.handle

        async def count(request: web.Request) -> web.StreamResponse:
            posts.append(request.content_length or 0)
            return await handle(request)

        async def hold() -> None:  # the first post is slow: the rest of the answer queues up
            await eventually(lambda: not upstream.active)

        callback.streams.handle = count  # type: ignore[method-assign]
        callback.on_first_post = hold
        words = " ".join(f"w{i}" for i in range(300))
        result = await run(compute_engine, remote.inference, "chat/completions",
                           chat(words, stream=True), port_of(upstream), 10.0,
                           callback.target(max_bytes=4096))
        streamed = await callback.received()
    assert len(events(streamed)) == 301
    assert result["offset"] == len(streamed) == sum(posts)
    assert max(posts) <= 4096
    assert len(posts) <= 2 * (len(streamed) // 4096 + 2)  # 302 if each event went alone


async def test_an_unreachable_callback_gets_the_whole_answer_as_the_result(
        compute_engine: LocalEndpoint, reference_upstream: ReferenceUpstream) -> None:
    stream_to = {"url": f"http://127.0.0.1:{closed_port()}/x", "secret": "s", "max_bytes": 65536,
                 "timeout": 5}
    result = await run(compute_engine, remote.inference, "completions",
                       json.dumps({"model": MODEL, "prompt": "all at the end", "stream": True}),
                       port_of(reference_upstream), 10.0, stream_to)
    assert (result["status"], result["offset"]) == (200, 0)
    assert "".join(e["choices"][0]["text"] for e in events(result["body"].encode())) == \
        "all at the end"


async def test_a_gone_caller_stops_the_generation(compute_engine: LocalEndpoint) -> None:
    async with ReferenceUpstream(chunk_delay=0.05) as upstream, Callback() as callback:
        async def leave() -> None:  # the caller leaves after the first chunk
            callback.streams.close(callback.stream)

        callback.on_first_post = leave
        words = " ".join(f"w{i}" for i in range(200))
        result = await run(compute_engine, remote.inference, "chat/completions",
                           chat(words, stream=True), port_of(upstream), 30.0, callback.target())
        assert result["abandoned"] is True
        assert await eventually(lambda: upstream.cancelled == 1)
    assert len(upstream.received) == 1


async def test_an_error_status_is_not_streamed(compute_engine: LocalEndpoint) -> None:
    async with ReferenceUpstream(fail_status=503) as upstream, Callback() as callback:
        result = await run(compute_engine, remote.inference, "chat/completions",
                           chat("x", stream=True), port_of(upstream), 10.0, callback.target())
    assert result["status"] == 503
    assert not callback.first_post.is_set()


# -- cluster status ---------------------------------------------------------------------------


async def test_scheduler_status_runs_the_query(compute_engine: LocalEndpoint) -> None:
    script = "import json; print(json.dumps({'Jobs': {'1.pbs': {'job_state': 'R'}}}))"
    ok = await run(compute_engine, remote.scheduler_status, [sys.executable, "-c", script])
    missing = await run(compute_engine, remote.scheduler_status, "qstat-not-here -f -F json")
    slow = await run(compute_engine, remote.scheduler_status,
                     [sys.executable, "-c", "import time; time.sleep(5)"], 0.2)
    assert (ok["returncode"], json.loads(ok["stdout"])) == (0, {"Jobs": {"1.pbs": {"job_state": "R"}}})
    assert missing == {"returncode": 127, "stdout": "", "stderr": "qstat-not-here: command not found"}
    assert (slow["returncode"], slow["stdout"]) == (124, "")


# -- serialization ----------------------------------------------------------------------------


async def test_an_endpoint_that_takes_only_source_refuses_pickled_references(
        compute_engine: LocalEndpoint, reference_upstream: ReferenceUpstream) -> None:
    # The SDK's default pickles a module's function by reference: the endpoint would need
    # this package installed to call it. The engine here allows source text only.
    with pytest.raises(TaskExecutionFailed) as caught:
        await compute_engine.run(remote.inference, ("completions", "{}", 1, 1.0),
                                 serializer=ComputeSerializer())
    assert "Code serializer DillCode disabled" in caught.value.remote_data
