"""Server-sent events through the gateway: timing, usage, mid-stream failures, disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from bytes_upstream import BytesUpstream

from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, ReferenceUpstream, eventually

MODEL = "reference-model"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
WORDS = "alpha beta gamma delta epsilon zeta"


async def start(make_gateway: Any, upstream: ReferenceUpstream, **target: Any) -> GatewayServer:
    """A gateway with one reference target in front of ``upstream``."""
    spec = {"name": "a", "backend": "reference", "url": upstream.url, **target}
    return await make_gateway({"models": {MODEL: {"targets": [spec]}}},
                              plugins=[ReferenceBackend()])


def chat_body(text: str = WORDS, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": True,
            **extra}


async def read_event(response: aiohttp.ClientResponse) -> str:
    """The data of the next SSE event ('' at the end of the stream)."""
    data = []
    while line := await response.content.readline():
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                break
            continue
        if line.startswith(b"data:"):
            data.append(line[5:].strip().decode())
    return "\n".join(data)


async def read_events(response: aiohttp.ClientResponse) -> list[str]:
    events = []
    while event := await read_event(response):
        events.append(event)
    return events


def text_of(events: list[str]) -> str:
    parts = []
    for event in events:
        if event != "[DONE]":
            for choice in json.loads(event).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(parts)




async def test_events_arrive_as_the_upstream_produces_them(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.chunk_delay = 0.2
    server = await start(make_gateway, reference_upstream)
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH, json=chat_body()) as response:
        first = await read_event(response)
        # The upstream is still producing the rest: nothing waited for the whole answer.
        assert reference_upstream.active == 1
        assert json.loads(first)["choices"][0]["delta"]["content"] == "alpha"
        rest = await read_events(response)
    assert text_of([first, *rest]) == WORDS
    assert rest[-1] == "[DONE]"
    await eventually(lambda: reference_upstream.active == 0)


async def test_sdk_sees_the_first_chunk_before_the_upstream_ends(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.chunk_delay = 0.2
    server = await start(make_gateway, reference_upstream)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    stream = await client.completions.create(model=MODEL, prompt=WORDS, stream=True)
    chunks = aiter(stream)
    first = await anext(chunks)
    assert reference_upstream.active == 1
    assert first.choices[0].text == "alpha"
    assert first.choices[0].text + "".join([c.choices[0].text async for c in chunks]) == WORDS


async def test_usage_is_logged_and_the_injected_chunk_hidden(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await start(make_gateway, reference_upstream)
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH, json=chat_body()) as response:
        request_id = response.headers["X-Request-Id"]
        events = await read_events(response)
    # The gateway asked the upstream for usage ...
    assert reference_upstream.received[-1].body["stream_options"] == {"include_usage": True}
    # ... and kept it from a caller who did not.
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])
    assert text_of(events) == WORDS
    row = await server.log_row(request_id)
    assert row["status"] == 200 and row["stream"] is True and row["target"] == "a"
    assert row["completion_tokens"] == 6 and row["prompt_tokens"] > 0
    assert row["ttft_ms"] is not None and row["error"] is None


async def test_usage_chunk_reaches_a_caller_who_asked(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await start(make_gateway, reference_upstream)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": WORDS}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in raw.parse()]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == WORDS
    row = await server.log_row(raw.headers["X-Request-Id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (last.usage.prompt_tokens, 6)


async def test_usage_is_not_requested_when_the_target_opts_out(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    server = await start(make_gateway, reference_upstream, stream_usage=False)
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH, json=chat_body()) as response:
        request_id = response.headers["X-Request-Id"]
        assert text_of(await read_events(response)) == WORDS
    assert "stream_options" not in reference_upstream.received[-1].body
    row = await server.log_row(request_id)
    assert row["completion_tokens"] is None


#: A stream of one word and a usage chunk, as an upstream asked for usage sends it.
SSE = (b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
       b'"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
       b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
       b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
       b"data: [DONE]\n\n")
#: A streaming request whose values a parse and re-serialization would change.
AS_WRITTEN = (b'{"seed": 1267650600228229401496703205376, "model": "reference-model",'
              b' "temperature": 1.50, "top_p": 1E-2, "stream": true, "zeta": 0.10000000000000000001,'
              b' "messages": [{"role": "user", "content": "caf\\u00e9"}]}')


def as_written(raw: bytes) -> list[Any]:
    """A JSON object as its members in order, numbers as spelled."""
    return json.loads(raw, object_pairs_hook=list, parse_int=str, parse_float=str)


async def stream_through(make_gateway: Any, upstream: BytesUpstream, raw: bytes,
                         content_type: str = "text/event-stream", **target: Any) -> list[str]:
    upstream.content_type, upstream.answer = content_type, SSE
    spec = {"name": "a", "backend": "reference", "url": upstream.url, **target}
    server = await make_gateway({"models": {MODEL: {"targets": [spec]}}},
                                plugins=[ReferenceBackend()])
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", data=raw,
            headers={**AUTH, "Content-Type": "application/json"}) as response:
        assert response.status == 200
        return await read_events(response)


@pytest.mark.parametrize("renamed", [None, "up/model-7"])
async def test_the_usage_request_is_the_only_change_the_upstream_sees(
        make_gateway: Any, bytes_upstream: BytesUpstream, renamed: str | None) -> None:
    events = await stream_through(make_gateway, bytes_upstream, AS_WRITTEN,
                                  **({"model": renamed} if renamed else {}))
    sent = as_written(bytes_upstream.bodies[-1])
    assert ("stream_options", [("include_usage", True)]) in sent
    expected = [(k, renamed if k == "model" and renamed else v) for k, v in as_written(AS_WRITTEN)]
    assert [m for m in sent if m[0] != "stream_options"] == expected
    if not renamed:  # and nothing else moved either
        assert bytes_upstream.bodies[-1].replace(b', "stream_options": {"include_usage": true}',
                                                 b"") == AS_WRITTEN
    assert [json.loads(e).get("usage") for e in events[:-1]] == [None]  # hidden from the caller


@pytest.mark.parametrize("content_type", ["text/event-stream; charset=utf-8",
                                          "Text/Event-Stream", " text/event-stream ;x=1"])
async def test_an_event_stream_is_recognised_however_its_type_is_spelled(
        make_gateway: Any, bytes_upstream: BytesUpstream, content_type: str) -> None:
    events = await stream_through(make_gateway, bytes_upstream, AS_WRITTEN, content_type)
    assert [json.loads(e).get("usage") for e in events[:-1]] == [None]
    assert events[-1] == "[DONE]"


async def test_a_usage_request_turned_off_is_turned_on_in_place(
        make_gateway: Any, bytes_upstream: BytesUpstream) -> None:
    raw = AS_WRITTEN[:-1] + b', "stream_options": {"include_usage": false, "x": 1.50}}'
    events = await stream_through(make_gateway, bytes_upstream, raw)
    assert bytes_upstream.bodies[-1] == raw.replace(b"false", b"true")
    assert len(events) == 2  # the word and [DONE]: the caller did not ask for usage


@pytest.mark.parametrize("options", [b'"yes"', b"[true]", b"1", b'{"include_usage": true}'])
async def test_stream_options_the_gateway_need_not_change_are_passed_on_untouched(
        make_gateway: Any, bytes_upstream: BytesUpstream, options: bytes) -> None:
    raw = AS_WRITTEN[:-1] + b', "stream_options": ' + options + b"}"
    events = await stream_through(make_gateway, bytes_upstream, raw)
    assert bytes_upstream.bodies[-1] == raw
    # Usage was not asked for by the gateway, so the upstream's usage chunk is not hidden.
    assert json.loads(events[-2])["usage"]["total_tokens"] == 4


async def test_upstream_breaking_mid_stream_ends_with_an_error_event(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.break_after = 2
    server = await start(make_gateway, reference_upstream)
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH, json=chat_body()) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
        events = await read_events(response)
    assert text_of(events[:2]) == "alpha beta"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_error" and "'a'" in error["message"]
    assert "[DONE]" not in events
    row = await server.log_row(request_id)
    assert (row["status"], row["error"]) == (200, "upstream_error")


async def test_sdk_raises_api_error_on_a_broken_stream(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.break_after = 3
    server = await start(make_gateway, reference_upstream)
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    received: list[str] = []

    def consume() -> None:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": WORDS}], stream=True)
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await asyncio.to_thread(consume)
    # What the caller reads says what happened and what to do, without library internals.
    assert caught.value.message == ("The target 'a' broke off in the middle of the "
                                    "answer; send the request again.")
    assert "".join(received) == "alpha beta gamma"


async def test_total_timeout_cuts_a_slow_stream(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.chunk_delay = 0.1
    server = await start(make_gateway, reference_upstream, timeouts={"total": 1.0})
    words = " ".join(f"w{i}" for i in range(100))
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/completions", headers=AUTH,
            json={"model": MODEL, "prompt": words, "stream": True}) as response:
        assert response.status == 200
        events = await read_events(response)
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_timeout" and error["type"] == "timeout_error"
    assert 0 < len(events) - 1 < 100
    await eventually(lambda: reference_upstream.cancelled == 1)


async def test_client_disconnect_cancels_the_upstream_stream(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.chunk_delay = 0.1
    server = await start(make_gateway, reference_upstream)
    words = " ".join(f"w{i}" for i in range(200))
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{server.base_url}/chat/completions", headers=AUTH,
                                   json=chat_body(words))
        request_id = response.headers["X-Request-Id"]
        assert json.loads(await read_event(response))["choices"][0]["delta"]["content"] == "w0"
        response.close()  # the caller goes away in the middle of the answer
    await eventually(lambda: reference_upstream.cancelled == 1)
    assert reference_upstream.active == 0
    row = await server.log_row(request_id)
    assert (row["status"], row["error"]) == (499, "client_disconnected")


async def test_client_disconnect_cancels_a_slow_json_request(
        make_gateway: Any, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.delay = 60
    server = await start(make_gateway, reference_upstream)
    headers = {**AUTH, "X-Request-Id": "gone-before-the-answer"}
    async with aiohttp.ClientSession() as http:

        async def ask() -> None:
            async with http.post(f"{server.base_url}/chat/completions", headers=headers,
                                 json=chat_body(stream=False)) as response:
                await response.read()

        call = asyncio.create_task(ask())
        await eventually(lambda: reference_upstream.active == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: reference_upstream.cancelled == 1)
    row = await server.log_row("gone-before-the-answer")
    assert (row["status"], row["error"]) == (499, "client_disconnected")
    assert row["target"] == "a"
