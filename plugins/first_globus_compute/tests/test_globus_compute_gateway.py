"""Backend ``globus_compute`` end to end: the real ``openai`` SDK, a gateway on loopback, the
real globus-compute ``Executor`` submitting to a fake Compute web service and receiving
results over AMQP, the endpoint engine running the inference function, and the reference
upstream standing in for vLLM. Streamed answers come back through the gateway's own callback
route, which the plugin adds through ``register_routes``."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from typing import Any

import aiohttp
import openai
import pytest
from first_globus_compute.backend import RUNTIME, _within
from globus_compute_support import MODEL, Site, callback_posts, register

from first_proxy.inflight import EXPIRED, absorb
from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, eventually


def client(server: GatewayServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct(site: Site) -> dict[str, Any]:
    """A second target for the same model, reached over plain HTTP: where failover goes."""
    return {"name": "direct", "backend": "reference", "url": site.upstream.url}


def broken(endpoint: str, body: str, *args: Any) -> dict:
    """Registered in place of the inference function: it fails on the endpoint."""
    raise RuntimeError("the GPU fell off the bus")


async def ask(server: GatewayServer, text: str = "hello cluster", **options: Any) -> Any:
    async with client(server) as api:
        return await api.chat.completions.with_raw_response.create(
            model=options.pop("model", MODEL), messages=[{"role": "user", "content": text}],
            **options)


def finished(site: Site) -> int:
    """Tasks the endpoint has completed."""
    return sum(1 for task in site.service.tasks.values() if task.result is not None)


def text_of(chunks: list[Any]) -> str:
    """The text of streamed chat or completion chunks."""
    parts = []
    for chunk in chunks:
        for choice in chunk.choices:
            delta = getattr(choice, "delta", None)
            parts.append((delta.content if delta else choice.text) or "")
    return "".join(parts)


# -- whole answers ----------------------------------------------------------------------------


async def test_chat_completions_and_embeddings_through_compute(site: Site) -> None:
    server = await site.gateway(site.target(model=MODEL), model="llama")
    async with client(server) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="llama", messages=[{"role": "user", "content": "hello from the gateway"}])
        completion = await api.completions.create(model="llama", prompt="one two three")
        embedding = await api.embeddings.create(model="llama", input=["a", "b", "c"])
    assert raw.parse().choices[0].message.content == "hello from the gateway"
    assert raw.headers["x-first-target"] == "polaris"
    assert completion.choices[0].text == "one two three"
    assert [len(e.embedding) for e in embedding.data] == [16, 16, 16]
    assert [r.body["model"] for r in site.upstream.received] == [MODEL] * 3
    assert not any(TEST_KEY in v for r in site.upstream.received for v in r.headers.values())
    row = await server.log_row(raw.headers["x-request-id"])
    assert (row["status"], row["target"], row["completion_tokens"]) == (200, "polaris", 4)
    assert finished(site) == 3


async def test_an_error_of_the_inference_server_is_passed_back(site: Site) -> None:
    server = await site.gateway(site.target(model="not-served"))
    with pytest.raises(openai.NotFoundError) as caught:
        await ask(server)
    # The upstream's own message, naming the model as the caller knows it.
    assert caught.value.body["message"] == f"The model `{MODEL}` does not exist."
    assert caught.value.body["type"] == "not_found_error"


# -- streamed answers -------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
async def test_a_stream_reaches_the_caller_while_it_is_generated(site: Site, endpoint: str) -> None:
    site.upstream.chunk_delay = 0.2
    server = await site.gateway()
    words = "one two three four five six"
    at_first_chunk: dict[str, Any] = {}
    chunks = []
    async with client(server) as api:
        if endpoint == "chat/completions":
            stream = await api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": words}], stream=True)
        else:
            stream = await api.completions.create(model=MODEL, prompt=words, stream=True)
        async for chunk in stream:
            if not chunks:  # is the answer still being generated, the task still running?
                at_first_chunk["generating"] = site.upstream.active
                at_first_chunk["tasks done"] = finished(site)
            chunks.append(chunk)
    assert at_first_chunk == {"generating": 1, "tasks done": 0}
    assert text_of(chunks) == words
    assert all(c.usage is None for c in chunks)  # asked for upstream, hidden from the caller
    assert site.upstream.received[-1].body["stream_options"] == {"include_usage": True}
    assert callback_posts(server) >= 2
    assert len(server.gateway.state[RUNTIME].streams) == 0


@pytest.mark.parametrize("callback", [None, "unreachable", "without the route"])
async def test_a_stream_the_callback_cannot_carry_arrives_whole_at_the_end(
        site: Site, callback: str | None) -> None:
    urls = {None: None, "unreachable": f"http://127.0.0.1:{closed_port()}",
            # A server that answers 404 for the route: not the gateway's "stream gone".
            "without the route": site.upstream.url.removesuffix("/v1")}
    server = await site.gateway(callback_url=urls[callback])
    async with client(server) as api:
        stream = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "all of it at once"}],
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert text_of(chunks) == "all of it at once"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert callback_posts(server) == 0


async def test_a_caller_that_leaves_stops_the_generation(site: Site) -> None:
    site.upstream.chunk_delay = 0.05
    server = await site.gateway()
    words = " ".join(f"w{i}" for i in range(200))
    async with client(server) as api:
        stream = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words}], stream=True)
        async for _ in stream:
            break
        await stream.close()
    # The stream is dropped; the task's next post is refused, and it lets go of the server.
    await eventually(lambda: len(server.gateway.state[RUNTIME].streams) == 0)
    assert await eventually(lambda: site.upstream.cancelled == 1)


async def test_each_gateway_instance_gets_the_posts_of_its_own_streams(site: Site) -> None:
    first = await site.gateway()
    second = await site.gateway()
    async with client(second) as api:
        stream = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "to the second"}], stream=True)
        assert text_of([c async for c in stream]) == "to the second"
    assert (callback_posts(first), callback_posts(second) > 0) == (0, True)
    # A stream of the second is unknown to the first.
    streams = second.gateway.state[RUNTIME].streams
    stream_id = streams.open().id
    async with aiohttp.ClientSession() as http:
        answer = await http.post(f"{first.url}/globus_compute/streams/{stream_id}",
                                 data=b"data: x\n\n", headers={"X-Stream-Offset": "0"})
        assert answer.status == 404


# -- failures ---------------------------------------------------------------------------------


async def test_a_failing_task_is_a_clear_error_without_its_traceback(site: Site) -> None:
    function = await register(site.service, broken)
    server = await site.gateway(site.target(function=function))
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(server)
    message = caught.value.body["message"]
    assert caught.value.status_code == 502
    assert "polaris: the function failed on the endpoint (RuntimeError: the GPU fell off the " \
           "bus)" in message
    assert "Traceback" not in message and "File " not in message


async def test_a_failing_task_fails_over_to_the_next_target(site: Site) -> None:
    function = await register(site.service, broken)
    server = await site.gateway(site.target(function=function), direct(site),
                                plugins=(ReferenceBackend(),))
    raw = await ask(server, "answered anyway")
    assert raw.parse().choices[0].message.content == "answered anyway"
    assert raw.headers["x-first-target"] == "direct"
    row = await server.log_row(raw.headers["x-request-id"])
    assert (row["attempts"], row["target"]) == (2, "direct")


async def test_an_inference_server_that_is_down_fails_over(site: Site) -> None:
    server = await site.gateway(site.target(api_port=closed_port()), direct(site),
                                plugins=(ReferenceBackend(),))
    raw = await ask(server)
    assert raw.headers["x-first-target"] == "direct"


async def test_an_offline_endpoint_times_out_and_is_reported_down(site: Site) -> None:
    server = await site.gateway(site.target(timeouts={"first_byte": 0.3}), direct(site),
                                plugins=(ReferenceBackend(),))
    statuses = server.gateway.statuses
    assert (await eventually(lambda: statuses.get(f"{MODEL}/polaris"))).reachable
    site.service.set_online(site.endpoint, False)  # since the last status check
    raw = await ask(server)
    assert raw.headers["x-first-target"] == "direct"
    row = await server.log_row(raw.headers["x-request-id"])
    assert row["attempts"] == 2
    await server.gateway.refresh_statuses()
    status = statuses[f"{MODEL}/polaris"]
    assert (status.reachable, status.last_error, status.queue_depth) == (
        False, "the endpoint is offline", 1.0)
    # Now the gateway knows: the next request goes to the live target first.
    raw = await ask(server)
    row = await server.log_row(raw.headers["x-request-id"])
    assert (row["attempts"], row["target"]) == (1, "direct")


async def test_an_offline_endpoint_alone_is_a_timeout(site: Site) -> None:
    site.service.set_online(site.endpoint, False)
    server = await site.gateway(site.target(timeouts={"first_byte": 0.3}))
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(server, stream=True)
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"
    assert len(server.gateway.state[RUNTIME].streams) == 0


async def test_an_answer_over_the_result_size_limit(site: Site) -> None:
    server = await site.gateway(server={"max_body_bytes": 32 * 2**20})
    async with client(server) as api:
        with pytest.raises(openai.APIStatusError) as caught:
            # The reference upstream repeats each prompt, up to 8,192 characters a choice.
            await api.completions.create(model=MODEL, prompt=["word " * 1638] * 1400)
    assert caught.value.status_code == 502
    assert re.search(r"the answer \(1\d\.\d MiB\) is larger than the endpoint lets a result be "
                     r"\(10\.0 MiB\); ask for fewer tokens or inputs", caught.value.body["message"])


async def test_a_service_error_is_reported_and_the_executor_replaced(site: Site) -> None:
    # (A 5xx is retried by the SDK for some seconds first; a 403 is not.)
    server = await site.gateway()
    site.service.fail_submit = 403
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(server)
    assert "polaris: Globus Compute refused the task (HTTP 403: The service cannot take " \
           "tasks right now)" in caught.value.body["message"]
    site.service.fail_submit = None
    raw = await ask(server, "back again")
    assert raw.parse().choices[0].message.content == "back again"


# -- load -------------------------------------------------------------------------------------


async def test_concurrent_requests_go_out_in_one_submission(site: Site) -> None:
    server = await site.gateway()
    await ask(server, "warm up")  # the executor exists
    site.service.accepting.clear()  # the next submission is held: the rest queue up behind it
    requests = [asyncio.ensure_future(ask(server, f"request {i}")) for i in range(16)]
    await eventually(lambda: site.service.held == 1 and len(server.gateway.in_flight) == 16)
    site.service.accepting.set()
    answers = await asyncio.gather(*requests)
    assert [a.parse().choices[0].message.content for a in answers] == \
        [f"request {i}" for i in range(16)]
    sizes = site.service.submissions
    assert sizes[0] == 1 and sum(sizes[1:]) == 16 and len(sizes) <= 3


async def test_under_load_the_sdk_never_holds_submissions_back(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    # Left to itself the SDK sends each task alone, and after 8 in a second it sleeps up to
    # a second more before the next (it logs "API rate-limit delay"): the gateway paces and
    # batches them instead.
    server = await site.gateway()
    await ask(server, "warm up")
    async with client(server) as api:
        async def user(name: str) -> list[str]:
            said = []
            for i in range(8):
                answer = await api.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"{name} {i}"}])
                said.append(answer.choices[0].message.content)
            return said

        said = await asyncio.gather(*(user(f"user{u}") for u in range(4)))
    assert said == [[f"user{u} {i}" for i in range(8)] for u in range(4)]
    assert not [r for r in caplog.records if "rate-limit delay" in r.getMessage()]
    assert sum(site.service.submissions) == 33


async def test_stopping_the_gateway_stops_the_executors_and_their_watchers(site: Site) -> None:
    from globus_compute_sdk.sdk.executor import _RESULT_WATCHERS

    server = await site.gateway()
    await ask(server)
    assert any(t.name == "TaskSubmitter" for t in threading.enumerate())
    await server.close()
    alive = [t for t in threading.enumerate() if t.name == "TaskSubmitter"
             or type(t).__name__ == "_ResultWatcher"]
    assert (alive, dict(_RESULT_WATCHERS)) == ([], {})


async def test_the_backends_deadline_never_hides_the_cores() -> None:
    # The core keeps a call's deadline by cancelling its task with EXPIRED, and takes that
    # cancellation back to try the next target. Were the backend to cancel the task for a
    # deadline of its own too, both due at once (the loop busy) would make a cancellation
    # the core does not recognise: the request would end as if its caller had gone.
    loop = asyncio.get_running_loop()

    async def core(waiting: asyncio.Future[Any]) -> str:
        try:
            await _within(waiting, 0.005)
        except TimeoutError:
            return "the backend's deadline"
        except asyncio.CancelledError as e:
            if not absorb(e, EXPIRED):
                raise
            return "the core's deadline"
        return "an answer"

    outcomes = []
    for _ in range(10):
        task = asyncio.ensure_future(core(loop.create_future()))
        await asyncio.sleep(0)  # its deadline is set
        loop.call_later(0.005, task.cancel, EXPIRED)
        time.sleep(0.01)  # noqa: ASYNC251 - the loop is busy: both deadlines are due at once
        outcomes.append(await task)
    assert set(outcomes) <= {"the backend's deadline", "the core's deadline"}
