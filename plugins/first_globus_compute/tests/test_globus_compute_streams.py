"""The callback route on its own, over loopback: only a stream's own task may post to it, in
posts of limited size, and what it takes is passed on once, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from first_globus_compute.streams import CALLBACK_ROUTE, MAX_POST_BYTES, End, Stream, Streams

from first_proxy.testing import serve_on_loopback


class Route:
    def __init__(self, streams: Streams, url: str, http: aiohttp.ClientSession) -> None:
        self.streams, self.url, self.http = streams, url, http

    async def post(self, stream: Stream | str, data: bytes = b"data: {}\n\n", *,
                   offset: int | str = 0, done: bool = False, secret: str | None = None,
                   **headers: str) -> tuple[int, Any]:
        stream_id = stream if isinstance(stream, str) else stream.id
        if secret is None and isinstance(stream, Stream):
            secret = stream.secret
        sent = {"Authorization": f"Bearer {secret}", "X-Stream-Offset": str(offset), **headers}
        if done:
            sent["X-Stream-Done"] = "1"
        async with self.http.post(self.url + CALLBACK_ROUTE.format(stream=stream_id), data=data,
                                  headers=sent) as answer:
            body = await answer.json() if answer.status != 204 else None
            return answer.status, body


@pytest.fixture
async def route() -> AsyncIterator[Route]:
    streams = Streams()
    app = web.Application()
    app.router.add_post(CALLBACK_ROUTE, streams.handle)
    runner = web.AppRunner(app, access_log=None)
    url = await serve_on_loopback(runner)
    async with aiohttp.ClientSession() as http:
        yield Route(streams, url, http)
    await runner.cleanup()


def taken(stream: Stream) -> list[bytes | End]:
    items = []
    while not stream.queue.empty():
        items.append(stream.queue.get_nowait())
    return items


async def test_posts_are_passed_on_in_order_and_once(route: Route) -> None:
    stream = route.streams.open()
    assert (await route.post(stream, b"data: 1\n\n"))[0] == 204
    # The same bytes again (the task missed the answer and resent): nothing new.
    assert (await route.post(stream, b"data: 1\n\n"))[0] == 204
    # Overlapping what came: only the new part goes on.
    assert (await route.post(stream, b"data: 1\n\ndata: 2\n\n"))[0] == 204
    assert (await route.post(stream, b"data: 3\n\n", offset=18, done=True))[0] == 204
    assert taken(stream) == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n", End()]
    assert stream.received == 27


async def test_a_finished_or_unknown_stream_is_404(route: Route) -> None:
    stream = route.streams.open()
    await route.post(stream, done=True)
    status, body = await route.post(stream)
    assert (status, body["error"]["code"]) == (404, "stream_not_found")
    assert body["error"]["message"] == "This stream is unknown or has ended; stop sending."
    assert (await route.post("no-such-stream", secret="x"))[0] == 404


async def test_a_closed_stream_is_404(route: Route) -> None:
    stream = route.streams.open()
    route.streams.close(stream)  # its caller went away
    assert (await route.post(stream))[0] == 404
    assert taken(stream) == []


@pytest.mark.parametrize("secret", ["wrong", "", "Bearer"])
async def test_only_the_streams_secret_is_accepted(route: Route, secret: str) -> None:
    stream = route.streams.open()
    other = route.streams.open()
    for wrong in (secret, other.secret):
        status, body = await route.post(stream, secret=wrong)
        assert (status, body["error"]["type"]) == (401, "authentication_error")
    assert taken(stream) == []


async def test_a_post_over_the_limit_is_refused(route: Route) -> None:
    stream = route.streams.open()
    assert (await route.post(stream, b"x" * MAX_POST_BYTES))[0] == 204
    status, body = await route.post(stream, b"x" * (MAX_POST_BYTES + 1), offset=MAX_POST_BYTES)
    assert (status, body["error"]["code"]) == (413, "stream_post_too_large")
    assert stream.received == MAX_POST_BYTES


async def test_a_post_without_a_length_is_refused(route: Route) -> None:
    stream = route.streams.open()

    async def chunked() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"

    status, _ = await route.post(stream, chunked())  # type: ignore[arg-type]
    assert status == 413


@pytest.mark.parametrize("offset", ["", "-1", "ten"])
async def test_the_offset_must_be_a_count(route: Route, offset: str) -> None:
    stream = route.streams.open()
    status, body = await route.post(stream, offset=offset)
    assert (status, body["error"]["code"]) == (400, "invalid_stream_offset")


async def test_a_gap_is_refused(route: Route) -> None:
    stream = route.streams.open()
    status, body = await route.post(stream, offset=5)
    assert (status, body["error"]["code"]) == (409, "stream_gap")
    assert taken(stream) == []
