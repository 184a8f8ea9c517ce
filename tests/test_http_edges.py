"""HTTP at its edges, over a raw socket: what no well-behaved client sends, answered in OpenAI's
shape, and connections that are slow or idle closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from yarl import URL

from first_proxy import hookimpl
from first_proxy.testing import TEST_KEY, GatewayServer, MakeGateway, ReferenceBackend, ReferenceUpstream

MODEL = "reference-model"
CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]})
#: How long a test waits for an answer before it fails rather than hangs.
PATIENCE = 10.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The OpenAI error object of this answer, its shape and content type checked."""
        assert self.headers["content-type"].startswith("application/json"), self
        body = orjson.loads(self.body)
        assert list(body) == ["error"]
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        return error


class Connection:
    """One TCP connection to the gateway, written and read byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: GatewayServer) -> Connection:
        url = URL(server.url)
        assert url.host is not None and url.port is not None
        return cls(*await asyncio.open_connection(url.host, url.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        """The next answer: its status line, headers and (Content-Length) body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), PATIENCE)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), PATIENCE)
        return Answer(int(status_line.split()[1]), headers, body)

    async def closed(self) -> bool:
        """Whether the gateway closes the connection without sending anything more."""
        try:
            return await asyncio.wait_for(self.reader.read(), PATIENCE) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def connect(server: GatewayServer) -> AsyncIterator[Any]:
    """``await connect()``: a new :class:`Connection` to ``server``, closed after the test."""
    opened: list[Connection] = []

    async def make() -> Connection:
        opened.append(await Connection.open(server))
        return opened[-1]

    yield make
    for connection in opened:
        connection.close()


@pytest.fixture
async def server(make_gateway: MakeGateway, reference_upstream: ReferenceUpstream) -> GatewayServer:
    return await make_gateway({
        "server": {"max_body_bytes": 4096, "body_timeout": 0.3, "idle_timeout": 0.3},
        "models": {MODEL: {"targets": [{"name": "a", "backend": "reference",
                                        "url": reference_upstream.url}]}},
    }, plugins=[ReferenceBackend()])


def post_head(path: str = "/v1/chat/completions", *, length: int | None = len(CHAT),
              key: bytes | None = TEST_KEY.encode(), extra: bytes = b"") -> bytes:
    """The request line and headers of a POST, up to and with the blank line."""
    head = b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" % path.encode()
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    if key is not None:
        head += b"Authorization: Bearer " + key + b"\r\n"
    return head + extra + b"\r\n"


async def still_serving(connect: Any) -> None:
    connection = await connect()
    await connection.send(post_head() + CHAT)
    assert (await connection.answer()).status == 200


# -- aiohttp's parser: refused requests in OpenAI's shape ------------------------------------


@pytest.mark.parametrize("request_bytes", [
    pytest.param(post_head(length=None, extra=b"Transfer-Encoding: chunked\r\n") + b"zz\r\n{}\r\n0\r\n\r\n",
                 id="bad-chunk-size"),
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", id="no-host"),
    pytest.param(post_head(extra=b"X-Padding: " + b"x" * 9000 + b"\r\n") + CHAT, id="oversized-header"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nBad Header\r\n\r\n", id="no-colon"),
    pytest.param(b"GET /v1/models HTTP/9.9\r\nHost: gateway\r\n\r\n", id="bad-version"),
    pytest.param(post_head(extra=b"Content-Length: 3\r\n") + CHAT, id="two-lengths"),
])
async def test_requests_the_http_parser_refuses_get_an_openai_error(connect: Any,
                                                                   request_bytes: bytes) -> None:
    connection = await connect()
    await connection.send(request_bytes)
    answer = await connection.answer()
    assert answer.status == 400, answer
    error = answer.error()
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http")
    assert "not valid HTTP" in error["message"]
    assert answer.headers["server"] == "first-proxy"
    assert await connection.closed()
    await still_serving(connect)


@pytest.mark.parametrize("target", [b"*", b"gateway:443", b"/v1/%0A", b"/v1/models/a%0Ab",
                                    b"http://gateway/v1/%0a?x=1"])
async def test_a_target_no_route_can_match_is_an_openai_404(connect: Any, target: bytes) -> None:
    connection = await connect()
    method = b"CONNECT" if target == b"gateway:443" else b"OPTIONS" if target == b"*" else b"GET"
    await connection.send(b"%s %s HTTP/1.1\r\nHost: gateway\r\n\r\n" % (method, target))
    answer = await connection.answer()
    assert answer.status == 404, answer
    error = answer.error()
    assert error["code"] == "unknown_route"
    assert f"{method.decode()} {target.decode()}." in error["message"]
    assert answer.headers["server"] == "first-proxy"
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize("header", [
    b"Authorization: Bearer sk-secret-" + b"s" * 9000,
    b"Authorization: Bearer sk-secret-\x00",
    b"X-Api-Key: sk-secret-" + b"s" * 9000,
])
async def test_a_refused_request_is_not_quoted_back_or_logged(connect: Any, header: bytes,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    connection = await connect()
    await connection.send(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n" + header + b"\r\n\r\n")
    answer = await connection.answer()
    assert answer.status == 400, answer
    assert answer.error()["code"] == "invalid_http"
    assert b"sk-secret" not in answer.body
    assert "sk-secret" not in caplog.text


# -- credentials the key check cannot decode -----------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
    ("POST", "/resource_server/v1/chat/completions"),
    ("POST", "/resource_server/local/reference/v1/chat/completions"),
    ("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL}"), ("GET", "/status"),
    ("GET", "/resource_server/status"),
])
async def test_a_non_utf8_bearer_token_is_401(connect: Any, reference_upstream: ReferenceUpstream,
                                              method: str, path: str) -> None:
    connection = await connect()
    head = post_head(path, key=b"\xff") if method == "POST" else (
        b"GET %s HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer \xff\r\n\r\n" % path.encode())
    await connection.send(head + (CHAT if method == "POST" else b""))
    answer = await connection.answer()
    assert answer.status == 401, answer
    assert answer.error()["code"] == "invalid_api_key"
    assert not reference_upstream.received


# -- Expect: 100-continue -------------------------------------------------------------------


async def test_expect_continue_gets_100_then_the_answer(connect: Any) -> None:
    connection = await connect()
    await connection.send(post_head(extra=b"Expect: 100-continue\r\n"))
    assert await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), PATIENCE) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    await connection.send(CHAT)
    answer = await connection.answer()
    assert answer.status == 200
    assert orjson.loads(answer.body)["choices"][0]["message"]["content"] == "hello there"


@pytest.mark.parametrize(("head", "status", "code"), [
    (post_head(length=5000, extra=b"Expect: 100-continue\r\n"), 413, "request_too_large"),
    (post_head(key=None, extra=b"Expect: 100-continue\r\n"), 401, "missing_credentials"),
    (post_head(key=b"sk-unknown", extra=b"Expect: 100-continue\r\n"), 401, "invalid_api_key"),
    (post_head(extra=b"Expect: 200-ok\r\n"), 417, "expectation_failed"),
])
async def test_expect_continue_is_refused_before_the_body_is_sent(
        connect: Any, reference_upstream: ReferenceUpstream, head: bytes, status: int,
        code: str) -> None:
    connection = await connect()
    await connection.send(head)  # and no body: the answer must come without it
    answer = await connection.answer()
    assert answer.status == status, answer
    assert answer.error()["code"] == code
    assert answer.headers["connection"] == "close"
    assert not reference_upstream.received
    await still_serving(connect)


class BrokenAuthenticator:
    """A plugin whose credential check fails for one key."""

    @hookimpl
    def authenticate(self, credential: str | None) -> None:
        if credential == "sk-breaks-the-plugin":
            raise RuntimeError("the identity provider's client broke")


async def test_a_plugin_failing_on_the_expect_check_is_a_500_with_a_request_id(
        make_gateway: MakeGateway, reference_upstream: ReferenceUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    server = await make_gateway({"models": {MODEL: {"targets": [
        {"name": "a", "backend": "reference", "url": reference_upstream.url}]}}},
        plugins=[ReferenceBackend(), BrokenAuthenticator()])
    connection = await Connection.open(server)
    try:
        await connection.send(post_head(key=b"sk-breaks-the-plugin",
                                        extra=b"Expect: 100-continue\r\n"))
        with caplog.at_level(logging.ERROR, logger="first_proxy"):
            answer = await connection.answer()
    finally:
        connection.close()
    assert answer.status == 500, answer
    error = answer.error()
    request_id = answer.headers["x-request-id"]
    assert request_id in error["message"]
    assert "identity provider" not in error["message"]  # the details stay in the log
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)
    assert answer.headers["connection"] == "close"
    assert not reference_upstream.received
    connection = await Connection.open(server)
    try:
        await connection.send(post_head() + CHAT)
        assert (await connection.answer()).status == 200
    finally:
        connection.close()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/health"), ("GET", "/v1/models"), ("GET", "/status"), ("GET", "/nowhere"),
    ("DELETE", "/v1/chat/completions"),
])
@pytest.mark.parametrize("expectation", [b"200-ok", b"100-continue\xff", b"\xff\xfe"])
async def test_an_unknown_expectation_on_any_route_is_417(connect: Any, method: str, path: str,
                                                          expectation: bytes) -> None:
    connection = await connect()
    await connection.send(b"%s %s HTTP/1.1\r\nHost: gateway\r\nExpect: %s\r\n\r\n"
                          % (method.encode(), path.encode(), expectation))
    answer = await connection.answer()
    assert answer.status == 417, answer
    assert answer.error()["code"] == "expectation_failed"
    await still_serving(connect)


async def test_expect_continue_on_a_route_without_a_body_is_answered_at_once(connect: Any) -> None:
    connection = await connect()
    await connection.send(b"GET /health HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), PATIENCE) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    answer = await connection.answer()
    assert (answer.status, orjson.loads(answer.body)) == (200, {"status": "ok"})


# -- slow and idle connections ----------------------------------------------------------------


async def test_a_body_that_stops_arriving_is_408(connect: Any,
                                                 reference_upstream: ReferenceUpstream) -> None:
    connection = await connect()
    await connection.send(post_head() + CHAT[:10])  # the rest never comes
    answer = await connection.answer()
    assert answer.status == 408, answer
    error = answer.error()
    assert error["code"] == "request_timeout"
    assert "0.3 s" in error["message"]
    assert await connection.closed()
    assert not reference_upstream.received
    await still_serving(connect)


@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="nothing"),
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gate", id="half-a-header"),
    pytest.param(post_head() + CHAT, id="after-an-answer"),
])
async def test_an_idle_or_half_sent_connection_is_closed(connect: Any, sent: bytes) -> None:
    connection = await connect()
    await connection.send(sent)
    if sent.endswith(CHAT):
        assert (await connection.answer()).status == 200
    assert await connection.closed()
