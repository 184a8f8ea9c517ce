"""The reference upstream on its own: OpenAI's schemas for every request shape, 4xx for the
rest, a bounded record of what it received, and its switches."""

from __future__ import annotations

import asyncio
import base64
import gzip
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from first_proxy.testing import ReferenceUpstream, eventually
from first_proxy.testing.openai_answers import MAX_REPLY_CHARS

MODEL = "reference-model"
WORDS = "alpha beta gamma delta"

#: Keys OpenAI's OpenAPI document requires (possibly as null) that the SDK's models would
#: default to None when missing, so that ``model_validate`` alone does not catch their absence.
REQUIRED = {
    "chat choice": {"index", "message", "finish_reason", "logprobs"},
    "message": {"role", "content", "refusal"},
    "chunk choice": {"index", "delta", "finish_reason"},
    "completion choice": {"index", "text", "finish_reason", "logprobs"},
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, upstream: ReferenceUpstream, endpoint: str,
               body: Any, **kwargs: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(f"{upstream.url}/{endpoint}", data=data, **kwargs) as response:
        return response.status, orjson.loads(await response.read())


async def stream(http: aiohttp.ClientSession, upstream: ReferenceUpstream, endpoint: str,
                 body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed answer, which must end with ``[DONE]``."""
    async with http.post(f"{upstream.url}/{endpoint}", json={**body, "stream": True}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        events = (await response.text()).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    return [orjson.loads(event.removeprefix("data: ")) for event in events[:-2]]


def validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """``data`` as the SDK's ``model``, with every key OpenAI's schema requires present.

    A streamed completion has ``finish_reason: null`` until its choice's last chunk; the SDK
    reads those chunks as :class:`Completion`, whose ``finish_reason`` may not be null, so for
    them a null is checked and then left out.
    """
    if model is Completion:
        for choice in data["choices"]:
            assert choice["finish_reason"] in ("stop", "length", None)
        parsed = model.model_validate({**data, "choices": [
            {**c, "finish_reason": c["finish_reason"] or "stop"} for c in data["choices"]]})
    else:
        parsed = model.model_validate(data)
    for choice in data["choices"]:
        if model is ChatCompletion:
            assert REQUIRED["chat choice"] <= set(choice)
            assert REQUIRED["message"] <= set(choice["message"])
        elif model is ChatCompletionChunk:
            assert REQUIRED["chunk choice"] <= set(choice)
        else:
            assert REQUIRED["completion choice"] <= set(choice)
    return parsed


def texts_of_chunks(chunks: list[Any]) -> dict[int, str]:
    """Each choice's streamed text, by choice index."""
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            piece = choice.delta.content if isinstance(chunk, ChatCompletionChunk) else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
    return texts


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "x"}'}}

#: Chat bodies (less ``model``), and the text the reference model answers each with.
CHATS: list[tuple[str, dict[str, Any], str]] = [
    ("a string", {"messages": [user(WORDS)]}, WORDS),
    ("system and user", {"messages": [{"role": "system", "content": "be brief"}, user("hi")]},
     "hi"),
    ("developer", {"messages": [{"role": "developer", "content": "be brief"}, user("hi")]}, "hi"),
    ("text and image parts", {"messages": [user([
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "text", "text": "this"}])]}, "what is this"),
    ("an audio part", {"messages": [user([
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "text", "text": "transcribe"}])]}, "transcribe"),
    ("a tool call and its result", {"messages": [
        user("look x up"),
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"}]}, "found it"),
    ("an assistant without content", {"messages": [
        user("look x up"), {"role": "assistant", "tool_calls": [TOOL_CALL]}]}, "look x up"),
    ("an assistant refusal part", {"messages": [
        user("tell me"), {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        user([{"type": "text", "text": "please"}])]}, "please"),
    ("a function message", {"messages": [
        user("q"), {"role": "function", "name": "lookup", "content": "result"}]}, "result"),
    ("only null content", {"messages": [user(None)]}, "(empty)"),
    ("an empty string", {"messages": [user("")]}, "(empty)"),
    ("max_tokens", {"messages": [user(WORDS)], "max_tokens": 2}, "alpha beta"),
    ("max_completion_tokens", {"messages": [user(WORDS)], "max_completion_tokens": 1}, "alpha"),
    ("max_tokens 0", {"messages": [user(WORDS)], "max_tokens": 0}, ""),
    ("a stop string", {"messages": [user(WORDS)], "stop": "gam"}, "alpha beta "),
    ("stop strings", {"messages": [user(WORDS)], "stop": ["delta", "beta"]}, "alpha "),
    ("null limits", {"messages": [user(WORDS)], "max_tokens": None, "stop": None, "n": None},
     WORDS),
    ("settings it ignores", {"messages": [user(WORDS)], "temperature": 0.7, "top_p": 0.9,
                             "seed": 7, "user": "u", "logprobs": True, "top_logprobs": 2,
                             "response_format": {"type": "json_object"},
                             "tools": [{"type": "function", "function": {"name": "lookup"}}],
                             "tool_choice": "auto", "parallel_tool_calls": True}, WORDS),
]


@pytest.mark.parametrize(("body", "text"), [(b, t) for _, b, t in CHATS],
                         ids=[name for name, _, _ in CHATS])
@pytest.mark.parametrize("n", [1, 3])
async def test_chat_answers_follow_openai_schema(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream,
        body: dict[str, Any], text: str, n: int) -> None:
    body = {"model": MODEL, **body, "n": n}
    status, data = await post(http, reference_upstream, "chat/completions", body)
    assert status == 200, data
    answer = validated(ChatCompletion, data)
    assert [c.index for c in answer.choices] == list(range(n))
    assert {c.message.content for c in answer.choices} == {text}
    assert {(c.message.role, c.message.refusal) for c in answer.choices} == {("assistant", None)}
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    raw = await stream(http, reference_upstream, "chat/completions",
                       {**body, "stream_options": {"include_usage": True}})
    chunks = [validated(ChatCompletionChunk, chunk) for chunk in raw]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    *answered, usage = chunks
    assert usage.choices == [] and usage.usage == answer.usage
    assert all(c.usage is None for c in answered)
    assert texts_of_chunks(answered) == dict.fromkeys(range(n), text)
    firsts = {}
    for chunk in answered:
        firsts.setdefault(chunk.choices[0].index, chunk.choices[0].delta)
    assert {(d.role, d.refusal) for d in firsts.values()} == {("assistant", None)}
    finishes = {c.choices[0].index: c.choices[0].finish_reason
                for c in answered if c.choices[0].finish_reason}
    assert finishes == {c.index: c.finish_reason for c in answer.choices}


@pytest.mark.parametrize(("limit", "stop", "finish"), [
    (None, None, "stop"), (2, None, "length"), (4, None, "stop"), (None, "gamma", "stop"),
    (2, "gamma", "length"), (0, None, "length")])
async def test_the_finish_reason_says_what_ended_the_answer(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream,
        limit: int | None, stop: str | None, finish: str) -> None:
    body = {"model": MODEL, "messages": [user(WORDS)], "max_tokens": limit, "stop": stop}
    _, data = await post(http, reference_upstream, "chat/completions", body)
    assert data["choices"][0]["finish_reason"] == finish
    raw = await stream(http, reference_upstream, "chat/completions", body)
    assert raw[-1]["choices"][0]["finish_reason"] == finish


async def test_an_answer_stops_at_the_models_context(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    body = {"model": MODEL, "prompt": ["x" * 10_000, "y " * 10_000], "n": 2}
    _, data = await post(http, reference_upstream, "completions", body)
    assert [(len(c["text"]), c["finish_reason"]) for c in data["choices"]] == \
        [(MAX_REPLY_CHARS, "length")] * 4


#: Completions prompts, and the text of each prompt's choices.
PROMPTS: list[tuple[Any, list[str]]] = [
    (WORDS, [WORDS]),
    (["one two", "three"], ["one two", "three"]),
    ([11, 12, 13], ["11 12 13"]),
    ([[11, 12], [13]], ["11 12", "13"]),
    ([[]], ["(empty)"]),
    ("", ["(empty)"]),
    (None, ["(empty)"]),
    ([], ["(empty)"]),
]


@pytest.mark.parametrize(("prompt", "texts"), PROMPTS, ids=[orjson.dumps(p).decode() for p, _ in PROMPTS])
@pytest.mark.parametrize("n", [1, 2])
async def test_completions_answers_follow_openai_schema(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream,
        prompt: Any, texts: list[str], n: int) -> None:
    body = {"model": MODEL, "prompt": prompt, "n": n, "max_tokens": 16, "temperature": 0,
            "echo": False, "logprobs": None, "suffix": None, "best_of": n}
    status, data = await post(http, reference_upstream, "completions", body)
    assert status == 200, data
    answer = validated(Completion, data)
    expected = [text for text in texts for _ in range(n)]
    assert [c.text for c in answer.choices] == expected
    assert [c.index for c in answer.choices] == list(range(len(expected)))

    raw = await stream(http, reference_upstream, "completions", body)
    chunks = [validated(Completion, chunk) for chunk in raw]
    assert texts_of_chunks(chunks) == dict(enumerate(expected))
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for


async def test_a_completions_body_without_prompt_is_one_empty_prompt(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    status, data = await post(http, reference_upstream, "completions", {"model": MODEL})
    assert status == 200
    assert [c.text for c in validated(Completion, data).choices] == ["(empty)"]


@pytest.mark.parametrize(("given", "count", "tokens"), [
    ("first text", 1, 2), (["first text", "second"], 2, 3), ([1, 2, 3], 1, 3),
    ([[1, 2], [3, 4, 5]], 2, 5), ("", 1, 0)])
async def test_embeddings_answers_follow_openai_schema(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream,
        given: Any, count: int, tokens: int) -> None:
    body = {"model": MODEL, "input": given, "encoding_format": "float", "user": "u"}
    status, data = await post(http, reference_upstream, "embeddings", body)
    assert status == 200, data
    answer = CreateEmbeddingResponse.model_validate(data)
    assert [d.index for d in answer.data] == list(range(count))
    assert all(len(d.embedding) == 16 for d in answer.data)
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (tokens, tokens)
    _, again = await post(http, reference_upstream, "embeddings", body)
    assert again == data  # the same text, the same vector


async def test_embeddings_in_base64_and_other_dimensions(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    body = {"model": MODEL, "input": ["a", "b"], "dimensions": 64}
    _, floats = await post(http, reference_upstream, "embeddings", body)
    _, packed = await post(http, reference_upstream, "embeddings",
                           {**body, "encoding_format": "base64"})
    for plain, encoded in zip(floats["data"], packed["data"], strict=True):
        assert len(plain["embedding"]) == 64
        decoded = struct.unpack("<64f", base64.b64decode(encoded["embedding"]))
        assert decoded == pytest.approx(plain["embedding"], abs=1e-6)


# -- through the openai SDK -------------------------------------------------------------------


async def test_the_openai_sdk_against_it_directly(reference_upstream: ReferenceUpstream) -> None:
    client = openai.AsyncOpenAI(base_url=reference_upstream.url, api_key="unused", max_retries=0)
    answer = await client.chat.completions.create(
        model=MODEL, n=2, max_completion_tokens=3, messages=[
            {"role": "developer", "content": "answer briefly"},
            {"role": "user", "content": [{"type": "text", "text": WORDS}]},
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one two three four five"}])
    assert [(c.message.content, c.finish_reason) for c in answer.choices] == \
        [("one two three", "length")] * 2
    chunks = [c async for c in await client.chat.completions.create(
        model=MODEL, messages=[user(WORDS)], stream=True, stream_options={"include_usage": True})]
    assert texts_of_chunks(chunks) == {0: WORDS}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    completion = await client.completions.create(model=MODEL, prompt=["a b", "7 8"], stop=" ")
    assert [c.text for c in completion.choices] == ["a", "7"]
    # The SDK asks for base64 unless told otherwise, and decodes it.
    embedded = await client.embeddings.create(model=MODEL, input=["a", "b"])
    assert reference_upstream.received[-1].body["encoding_format"] == "base64"
    floats = await client.embeddings.create(model=MODEL, input=["a", "b"], encoding_format="float")
    for decoded, plain in zip(embedded.data, floats.data, strict=True):
        assert decoded.embedding == pytest.approx(plain.embedding, abs=1e-6)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=[user("x")])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=[])
    assert "messages" in caught.value.message


# -- what it cannot answer ----------------------------------------------------------------------

CHAT = {"model": MODEL, "messages": [user("hello")]}

BAD: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    ("chat/completions", b"not json", None),
    ("chat/completions", b"", None),
    ("chat/completions", b'{"model": "reference-model",', None),
    ("chat/completions", b"\xff\xfe", None),
    ("chat/completions", b"[1, 2]", None),
    ("chat/completions", b'"reference-model"', None),
    ("chat/completions", b"null", None),
    ("chat/completions", {"messages": [user("x")]}, "model"),
    ("chat/completions", {**CHAT, "model": 7}, "model"),
    ("chat/completions", {"model": MODEL}, "messages"),
    ("chat/completions", {"model": MODEL, "messages": "hello"}, "messages"),
    ("chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("chat/completions", {"model": MODEL, "messages": [1]}, "messages[0]"),
    ("chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
     "messages[0].role"),
    ("chat/completions", {"model": MODEL, "messages": [user(5)]}, "messages[0].content"),
    ("chat/completions", {"model": MODEL, "messages": [user([{"type": "video"}])]},
     "messages[0].content[0]"),
    ("chat/completions", {"model": MODEL, "messages": [user(["text"])]}, "messages[0].content[0]"),
    ("chat/completions", {"model": MODEL, "messages": [user([{"type": "text", "text": 5}])]},
     "messages[0].content[0].text"),
    ("chat/completions", {"model": MODEL, "messages": [
        {"role": "assistant", "content": [{"type": "refusal"}]}]}, "messages[0].content[0].refusal"),
    ("chat/completions", {"model": MODEL, "messages": [
        {"role": "assistant", "content": None, "tool_calls": {"id": "x"}}]},
     "messages[0].tool_calls"),
    ("chat/completions", {**CHAT, "n": 0}, "n"),
    ("chat/completions", {**CHAT, "n": 129}, "n"),
    ("chat/completions", {**CHAT, "n": "2"}, "n"),
    ("chat/completions", {**CHAT, "n": True}, "n"),
    ("chat/completions", {**CHAT, "n": 2.0}, "n"),
    ("chat/completions", {**CHAT, "max_tokens": -1}, "max_tokens"),
    ("chat/completions", {**CHAT, "max_completion_tokens": "10"}, "max_completion_tokens"),
    ("chat/completions", {**CHAT, "stop": 5}, "stop"),
    ("chat/completions", {**CHAT, "stop": ["a", 1]}, "stop"),
    ("chat/completions", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("chat/completions", {**CHAT, "stream": "yes"}, "stream"),
    ("chat/completions", {**CHAT, "stream": True, "stream_options": "usage"}, "stream_options"),
    ("chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": 1}},
     "stream_options.include_usage"),
    ("completions", {"model": MODEL, "prompt": 5}, "prompt"),
    ("completions", {"model": MODEL, "prompt": {"text": "x"}}, "prompt"),
    ("completions", {"model": MODEL, "prompt": [1, "a"]}, "prompt"),
    ("completions", {"model": MODEL, "prompt": [[1], "a"]}, "prompt"),
    ("completions", {"model": MODEL, "prompt": [True]}, "prompt"),
    ("completions", {"model": MODEL, "prompt": [1.5]}, "prompt"),
    ("completions", {"model": MODEL, "prompt": ["x"] * 1025, "n": 2}, "n"),
    ("embeddings", {"model": MODEL}, "input"),
    ("embeddings", {"model": MODEL, "input": []}, "input"),
    ("embeddings", {"model": MODEL, "input": 3.5}, "input"),
    ("embeddings", {"model": MODEL, "input": [None]}, "input"),
    ("embeddings", {"model": MODEL, "input": ["x"] * 2049}, "input"),
    ("embeddings", {"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ("embeddings", {"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
]


@pytest.mark.parametrize(("endpoint", "body", "param"), BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
async def test_what_it_cannot_answer_gets_a_400(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream, endpoint: str,
        body: bytes | dict[str, Any], param: str | None) -> None:
    status, error = await post(http, reference_upstream, endpoint, body)
    assert (status, error) == (400, {"object": "error", "message": error["message"],
                                     "type": "BadRequestError", "param": param, "code": 400})
    assert error["message"].strip()
    # ... and the next request is answered as usual.
    assert (await post(http, reference_upstream, "chat/completions", CHAT))[0] == 200


async def test_a_body_that_does_not_match_its_content_encoding_gets_a_400(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    for encoding in ("gzip", "deflate"):
        status, error = await post(http, reference_upstream, "chat/completions", CHAT,
                                   headers={"Content-Encoding": encoding})
        assert (status, error["type"]) == (400, "BadRequestError")
        assert "Content-Encoding" in error["message"]
    status, _ = await post(http, reference_upstream, "chat/completions",
                           gzip.compress(orjson.dumps(CHAT)), headers={"Content-Encoding": "gzip"})
    assert status == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/chat/completions", 404), ("GET", "/v1/chat/completions", 405),
    ("POST", "/v1/nowhere", 404), ("GET", "/metrics", 404)])
async def test_unknown_models_routes_and_methods_get_a_4xx_in_the_same_shape(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream, method: str,
        path: str, status: int) -> None:
    root = reference_upstream.url.removesuffix("/v1")
    body = {**CHAT, "model": "no-such-model"}
    async with http.request(method, root + path, json=body) as response:
        error = orjson.loads(await response.read())
    assert response.status == status
    assert set(error) == {"object", "message", "type", "param", "code"}
    assert (error["object"], error["code"]) == ("error", status)


# -- what it records ----------------------------------------------------------------------------


async def test_received_keeps_only_the_latest_requests(http: aiohttp.ClientSession) -> None:
    async with ReferenceUpstream(max_received=3) as upstream:
        for i in range(5):
            await post(http, upstream, "chat/completions", {**CHAT, "messages": [user(f"m{i}")]})
        await post(http, upstream, "chat/completions", b"not json")
        assert [r.body["messages"][0]["content"] for r in list(upstream.received)[:2]] == \
            ["m3", "m4"]
        assert upstream.received[-1].body is None  # not JSON: recorded, with no body
        assert upstream.received[-1].path == "/v1/chat/completions"
    assert ReferenceUpstream().received.maxlen == 1000


async def test_with_recording_off_it_records_nothing_and_still_answers(
        http: aiohttp.ClientSession) -> None:
    async with ReferenceUpstream(max_received=0) as upstream:
        for _ in range(3):
            assert (await post(http, upstream, "chat/completions", CHAT))[0] == 200
        assert len(upstream.received) == 0


# -- switches ---------------------------------------------------------------------------------


async def test_fail_status_for_a_number_of_requests(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.fail_status, reference_upstream.fail_times = 503, 2
    statuses = [(await post(http, reference_upstream, "chat/completions", CHAT))[0]
                for _ in range(3)]
    assert statuses == [503, 503, 200]


async def test_a_key_it_does_not_know_gets_a_401(
        http: aiohttp.ClientSession) -> None:
    async with ReferenceUpstream(api_key="sk-upstream") as upstream:
        status, error = await post(http, upstream, "chat/completions", CHAT)
        assert (status, error["type"]) == (401, "authentication_error")
        status, _ = await post(http, upstream, "chat/completions", CHAT,
                               headers={"Authorization": "Bearer sk-upstream"})
        assert status == 200


async def test_break_after_ends_the_stream_after_that_many_events(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.break_after = 2
    events = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{reference_upstream.url}/chat/completions",
                             json={**CHAT, "messages": [user(WORDS)], "stream": True}) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(orjson.loads(line[6:]))
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["alpha", " beta"]


async def test_hang_never_answers_and_counts_the_caller_leaving(
        http: aiohttp.ClientSession, reference_upstream: ReferenceUpstream) -> None:
    reference_upstream.hang = True
    request = http.post(f"{reference_upstream.url}/chat/completions", json=CHAT)
    task = asyncio.ensure_future(request)
    await eventually(lambda: reference_upstream.active == 1)
    task.cancel()
    await eventually(lambda: reference_upstream.cancelled == 1 and reference_upstream.active == 0)
