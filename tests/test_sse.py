"""The SSE tee: events pass through whole and in order, usage is read on the way."""

from __future__ import annotations

import orjson
import pytest

from first_proxy.streaming import UsageTee, usage_of

CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


def run(tee: UsageTee, stream: bytes, size: int) -> tuple[bytes, list[bytes]]:
    pieces = [tee.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
    pieces.append(tee.flush())
    return b"".join(pieces), [p for p in pieces if p]


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_usage_chunk_is_read_and_hidden_when_injected(size: int, newline: bytes) -> None:
    stream = (CONTENT * 3 + USAGE + DONE).replace(b"\n", newline)
    tee = UsageTee(hide_usage_chunk=True)
    out, _ = run(tee, stream, size)
    assert out == (CONTENT * 3 + DONE).replace(b"\n", newline)
    assert tee.usage == {"prompt_tokens": 3, "completion_tokens": 2}


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_usage_chunk_is_kept_when_the_caller_asked(size: int) -> None:
    stream = CONTENT + USAGE + DONE
    tee = UsageTee(hide_usage_chunk=False)
    out, _ = run(tee, stream, size)
    assert out == stream
    assert tee.usage == {"prompt_tokens": 3, "completion_tokens": 2}


@pytest.mark.parametrize("size", [1, 3, 10_000])
def test_usage_null_in_every_chunk_is_passed_and_the_usage_chunk_hidden(size: int) -> None:
    # OpenAI sends "usage": null in every chunk once usage is asked for.
    content = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    tee = UsageTee(hide_usage_chunk=True)
    out, _ = run(tee, content * 3 + USAGE + DONE, size)
    assert out == content * 3 + DONE
    assert tee.usage == {"prompt_tokens": 3, "completion_tokens": 2}


@pytest.mark.parametrize("size", [1, 10_000])
def test_the_latest_usage_counts_when_every_chunk_has_some(size: int) -> None:
    # vLLM's continuous usage stats: a running count on every chunk, the total at the end.
    def content(tokens: int) -> bytes:
        return (b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,'
                b'"completion_tokens":%d}}\n\n' % tokens)

    total = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\n'
    tee = UsageTee(hide_usage_chunk=True)
    out, _ = run(tee, content(1) + content(2) + total + DONE, size)
    assert out == content(1) + content(2) + DONE
    assert tee.usage == {"prompt_tokens": 3, "completion_tokens": 3}


def test_complete_events_are_passed_on_at_once_and_partial_ones_wait() -> None:
    tee = UsageTee()
    assert tee.feed(CONTENT + CONTENT[:10]) == CONTENT
    assert tee.feed(CONTENT[10:]) == CONTENT
    assert tee.flush() == b""


def test_a_usage_chunk_with_choices_is_never_hidden() -> None:
    # vLLM's continuous usage stats put usage on every content chunk.
    event = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}\n\n'
    tee = UsageTee(hide_usage_chunk=True)
    assert tee.feed(event) == event
    assert tee.usage == {"prompt_tokens": 1}


@pytest.mark.parametrize("event", [
    b'data: {"usage": null, "choices": []}\n\n',
    b'data: {"text": "the word \\"usage\\" in text"}\n\n',
    b'data: not json but "usage"\n\n',
    b': a comment with "usage"\n\n',
])
def test_events_that_only_mention_usage_pass_untouched(event: bytes) -> None:
    tee = UsageTee(hide_usage_chunk=True)
    assert tee.feed(event) == event
    assert tee.usage is None


def test_usage_of_reads_the_usage_object_of_a_large_answer() -> None:
    body = orjson.dumps({
        "object": "list",
        "data": [{"embedding": [0.1] * 20_000, "index": 0}],
        "usage": {"prompt_tokens": 7, "total_tokens": 7, "details": {"cached": 0}},
    })
    assert usage_of(body) == {"prompt_tokens": 7, "total_tokens": 7, "details": {"cached": 0}}


@pytest.mark.parametrize("body", [
    b'{"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 5}}',
    b'{"usage"\r\n:\t{ "prompt_tokens": 3, "prompt_tokens_details": null } }',
    b'{"usage" : { "prompt_tokens": 3, "details": {"cached": 0}, "more": {"a": 1} } }',
    b'{"usage": {"prompt_tokens": 3, "details": {"cached": {"read": 1, "written": 2}}}}',
])
def test_usage_of_reads_usage_flat_or_nested_to_any_depth(body: bytes) -> None:
    assert usage_of(body) == orjson.loads(body)["usage"]


@pytest.mark.parametrize("body", [
    b'{"usage": null, "choices": [{"message": {"content": "{}"}}]}',
    b'{"usage": null, "system_fingerprint": {"a": 1}}',
    b'{"content": "usage", "usage": "{not: an object}"}',
    b'{"choices": []}',
    b'{"usage": {"prompt_tokens": ',
    b"",
])
def test_usage_of_gives_none_without_a_usage_object(body: bytes) -> None:
    assert usage_of(body) is None
