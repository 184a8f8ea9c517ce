"""The real OpenAI SDK against a gateway on loopback, in front of a reference upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, ReferenceUpstream

MODEL = "reference-model"
#: A gateway name with a slash, served upstream as ``reference-model``.
ALIAS = "meta-llama/Meta-Llama-3.1-8B-Instruct"
PREFIXES = ["/v1", "/resource_server/v1"]


@pytest.fixture
async def server(reference_upstream: ReferenceUpstream, make_gateway: Any) -> GatewayServer:
    url = reference_upstream.url
    return await make_gateway({"models": {
        MODEL: {"targets": [
            {"name": "local", "backend": "reference", "url": url},
            {"name": "polaris-vllm", "backend": "reference", "url": url,
             "cluster": "polaris", "framework": "vllm"},
        ]},
        ALIAS: {"targets": [{"name": "renamed", "backend": "reference", "url": url,
                             "model": MODEL}]},
    }}, plugins=[ReferenceBackend()])


def sync_client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)


def async_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_chat_completion_sync(server: GatewayServer, reference_upstream: ReferenceUpstream,
                                    prefix: str) -> None:
    client = sync_client(server.url + prefix)
    answer = await asyncio.to_thread(
        client.chat.completions.create, model=MODEL, messages=chat("hello there gateway"))
    assert answer.choices[0].message.content == "hello there gateway"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    sent = reference_upstream.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert TEST_KEY not in str(sent.headers)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_chat_completion_stream_async(server: GatewayServer, prefix: str) -> None:
    client = async_client(server.url + prefix)
    stream = await client.chat.completions.create(
        model=MODEL, messages=chat("one two three four"), stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three four"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks)


def _stream_text(client: openai.OpenAI, **kwargs: Any) -> str:
    return "".join(chunk.choices[0].text for chunk in client.completions.create(stream=True, **kwargs))


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_completions(server: GatewayServer, prefix: str) -> None:
    client = sync_client(server.url + prefix)
    answer = await asyncio.to_thread(client.completions.create, model=MODEL, prompt="a b c d e",
                                     max_tokens=3)
    assert answer.choices[0].text == "a b c"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    text = await asyncio.to_thread(_stream_text, client, model=MODEL, prompt="x y z")
    assert text == "x y z"


async def test_completions_stream_async(server: GatewayServer) -> None:
    stream = await async_client(server.base_url).completions.create(
        model=MODEL, prompt="streamed legacy completion", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "streamed legacy completion"


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_embeddings(server: GatewayServer, prefix: str) -> None:
    client = sync_client(server.url + prefix)
    answer = await asyncio.to_thread(client.embeddings.create, model=MODEL,
                                     input=["first text", "second"])
    assert [d.index for d in answer.data] == [0, 1]
    assert all(len(d.embedding) == 16 for d in answer.data)
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.usage.prompt_tokens == 3


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_models_list_and_retrieve(server: GatewayServer, prefix: str) -> None:
    client = async_client(server.url + prefix)
    listed = [model.id async for model in client.models.list()]
    assert sorted(listed) == sorted([MODEL, ALIAS])
    for name in (MODEL, ALIAS):
        found = await client.models.retrieve(name)
        assert (found.id, found.object) == (name, "model")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


async def test_model_name_is_translated_for_the_upstream(
        server: GatewayServer, reference_upstream: ReferenceUpstream) -> None:
    client = async_client(server.base_url)
    raw = await client.chat.completions.with_raw_response.create(model=ALIAS, messages=chat("hi"))
    assert raw.headers["X-First-Target"] == "renamed"
    assert raw.parse().choices[0].message.content == "hi"
    assert reference_upstream.received[-1].body["model"] == MODEL


async def test_pinned_route_chooses_its_target(server: GatewayServer) -> None:
    client = async_client(f"{server.url}/resource_server/polaris/vllm/v1")
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=chat("pin"))
    assert raw.headers["X-First-Target"] == "polaris-vllm"
    assert raw.parse().choices[0].message.content == "pin"
    stream = await client.completions.create(model=MODEL, prompt="pinned stream", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "pinned stream"

    unpinned = await async_client(server.base_url).chat.completions.with_raw_response.create(
        model=MODEL, messages=chat("free"))
    assert unpinned.headers["X-First-Target"] == "local"


@pytest.mark.parametrize("pin", ["sophia/vllm", "polaris/sglang"])
async def test_pin_matching_nothing_is_404(server: GatewayServer,
                                           reference_upstream: ReferenceUpstream, pin: str) -> None:
    client = async_client(f"{server.url}/resource_server/{pin}/v1")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model=MODEL, messages=chat("x"))
    assert caught.value.code == "model_not_found"
    assert not reference_upstream.received


async def test_wrong_key_is_authentication_error(server: GatewayServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=chat("x"))


# -- raw HTTP, for what the SDK hides -------------------------------------------------------

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


async def test_headers_of_a_json_answer(server: GatewayServer) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=AUTH,
            json={"model": MODEL, "messages": chat("hi")}) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["X-First-Target"] == "local"
        assert len(response.headers["X-Request-Id"]) >= 16
        assert (await response.json())["choices"][0]["message"]["content"] == "hi"


async def test_headers_of_a_stream(server: GatewayServer) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.url}/resource_server/v1/completions", headers=AUTH,
            json={"model": MODEL, "prompt": "some words", "stream": True}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-First-Target"] == "local"
        assert response.headers["X-Request-Id"]
        body = await response.read()
    assert body.startswith(b"data: {")
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("stream", [False, True])
async def test_caller_request_id_is_echoed_and_forwarded(
        server: GatewayServer, reference_upstream: ReferenceUpstream, stream: bool) -> None:
    headers = {**AUTH, "X-Request-Id": "trace-abc.123"}
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/chat/completions", headers=headers,
            json={"model": MODEL, "messages": chat("hi"), "stream": stream}) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "trace-abc.123"
        await response.read()
    forwarded = {k.lower(): v for k, v in reference_upstream.received[-1].headers.items()}
    assert forwarded["x-request-id"] == "trace-abc.123"


async def test_unsafe_request_id_is_replaced(server: GatewayServer) -> None:
    headers = {**AUTH, "X-Request-Id": "no spaces/or slashes allowed"}
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base_url}/embeddings", headers=headers,
            json={"model": MODEL, "input": "x"}) as response:
        assert response.status == 200
        given = response.headers["X-Request-Id"]
    assert given and given != headers["X-Request-Id"]
