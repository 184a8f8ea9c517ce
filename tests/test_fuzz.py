"""A property-based fuzz of the request path, over raw HTTP, against one gateway on loopback
with the reference upstream behind it.

Whatever a caller sends (body, encoding, content type, method, path, header bytes), the
gateway's answer follows these rules:

- it never fails itself: no 500, no 503. A 502 (``upstream_error``) or 504
  (``upstream_timeout``) is allowed, because it relays a target's own failure, and only when
  its message names the target's attempt (``a: ...``);
- it never echoes the caller's key;
- every error is OpenAI's JSON: ``application/json``, ``{"error": {"message": str, "type":
  str, "param", "code": str or null}}`` (HEAD answers carry no body: only their status and
  content type are checked);
- a valid request is served, and reaches the upstream as sent (only the model name and the
  usage request change);
- the gateway goes on serving: a plain request after every example gets 200.

Examples come from a fixed seed (``derandomize``), so every run, in CI too, tries the same
cases; a failure prints the smallest failing example and how to reproduce it.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from first_proxy.testing import TEST_KEY, GatewayServer, ReferenceBackend, ReferenceUpstream, api_keys

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: The gateway's name of the model; the upstream knows it as ``reference-model``, so every
#: body the gateway forwards is edited on the way.
MODEL = "fuzz-model"
UPSTREAM_MODEL = "reference-model"
ENDPOINTS = ("chat/completions", "completions", "embeddings")
PREFIXES = ("/v1", "/resource_server/v1", "/resource_server/polaris/vllm/v1",
            "/resource_server/sophia/vllm/v1")
MAX_BODY = 64 * 1024
#: How long an exchange may take before the example fails as a hung connection.
PATIENCE = 15.0
#: Which 5xx statuses relay an upstream's failure, with their code.
UPSTREAM_FAILURES = {502: "upstream_error", 504: "upstream_timeout"}

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


class Fuzzed:
    """The gateway under test, its upstream, and a client session for plain requests."""

    def __init__(self, server: GatewayServer, upstream: ReferenceUpstream,
                 http: aiohttp.ClientSession) -> None:
        self.server, self.upstream, self.http = server, upstream, http
        url = URL(server.url)
        assert url.host is not None and url.port is not None
        self.host, self.port = url.host, url.port

    def __repr__(self) -> str:  # what a failing example prints
        return f"Fuzzed({self.server.url})"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fuzzed]:
    """One gateway for the whole module, serving ``fuzz-model`` from one reference upstream."""
    store = Path(tmp_path_factory.mktemp("fuzz")) / "gateway.db"
    async with ReferenceUpstream() as upstream, aiohttp.ClientSession() as http:
        server = GatewayServer({
            "auth": api_keys(), "store": f"sqlite:///{store}", "status": {"interval": 3600},
            "server": {"max_body_bytes": MAX_BODY, "body_timeout": 2, "idle_timeout": 2},
            "models": {MODEL: {"targets": [{
                "name": "a", "backend": "reference", "url": upstream.url, "model": UPSTREAM_MODEL,
                "cluster": "polaris", "framework": "vllm"}]}},
        }, plugins=[ReferenceBackend()])
        await server.start()
        try:
            yield Fuzzed(server, upstream, http)
        finally:
            await server.close()


# -- raw HTTP -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Collect(asyncio.Protocol):
    """Keeps every byte the gateway sends until it closes, even when it resets."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def exchange(gw: Fuzzed, request: bytes) -> Answer:
    """Send ``request`` on a new connection; the answer, read until the gateway closes."""
    transport, protocol = await asyncio.get_running_loop().create_connection(
        _Collect, gw.host, gw.port)
    try:
        transport.write(request)
        await asyncio.wait_for(asyncio.shield(protocol.closed), PATIENCE)
    except TimeoutError:
        raise AssertionError(f"no answer and no close within {PATIENCE} s") from None
    finally:
        transport.close()
    return parse(bytes(protocol.data))


def parse(data: bytes) -> Answer:
    """The final answer in ``data``, past any 100 Continue."""
    while True:
        head, found, rest = data.partition(b"\r\n\r\n")
        assert found, f"the gateway closed without a complete answer: {data[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        if status >= 200:
            break
        data = rest
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if not int(size, 16):
                break
            body += rest[:int(size, 16)]
            rest = rest[int(size, 16) + 2:]
        return Answer(status, headers, bytes(body))
    return Answer(status, headers, rest[:int(headers.get("content-length", len(rest)))])


def http_request(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                 *, length: bool = True) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: gateway", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- the rules ------------------------------------------------------------------------------


def check(answer: Answer, method: bytes = b"POST") -> dict[str, Any] | None:
    """Apply the module's rules to one answer; its error object, if it is an error."""
    assert 200 <= answer.status < 600, answer
    assert answer.headers.get("server") == "first-proxy", answer
    assert TEST_KEY.encode() not in answer.body, answer  # a caller's key is never echoed
    if answer.status < 400:
        event(f"{answer.status}")  # --hypothesis-show-statistics shows what was reached
        return None
    if method == b"HEAD":
        assert answer.headers.get("content-type", "").startswith("application/json"), answer
        return None
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    body = orjson.loads(answer.body)
    assert isinstance(body, dict) and list(body) == ["error"], answer
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, answer
    assert isinstance(error["message"], str) and error["message"], answer
    assert isinstance(error["type"], str) and error["type"], answer
    assert error["code"] is None or isinstance(error["code"], str), answer
    event(f"{answer.status} {error['code']}")
    if answer.status >= 500:
        # Only an upstream's failure, relayed, may be a 5xx: the gateway itself never fails.
        assert UPSTREAM_FAILURES.get(answer.status) == error["code"], answer
        assert "a: " in error["message"], answer
    return error


CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "still there"}]})
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


async def still_serving(gw: Fuzzed) -> None:
    async with gw.http.post(f"{gw.server.base_url}/chat/completions", data=CHAT,
                            headers={**AUTH, "Content-Type": "application/json"}) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["choices"][0]["message"]["content"] == "still there"


# -- strategies -----------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)
leaves = (st.none() | st.booleans() | st.integers(-(2**80), 2**80)
          | st.floats(allow_nan=False, allow_infinity=False) | text)
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=16)
#: Fields no reference server reads: they must pass through as they are.
extra_fields = st.dictionaries(text.map(lambda name: "x-" + name), json_values, max_size=5)
separators = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n ", " :\t"), (",\r\n", ":  ")])


@st.composite
def serialized(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON, written in one of many ways (escapes, spacing, key order)."""
    if isinstance(value, dict):
        items = draw(st.permutations(list(value.items())))
        value = dict(items)
    return json.dumps(value, ensure_ascii=draw(st.booleans()), separators=draw(separators),
                      indent=draw(st.none() | st.integers(0, 2))).encode()


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An endpoint and a body the gateway and the reference upstream must both accept."""
    endpoint = draw(st.sampled_from(ENDPOINTS))
    body: dict[str, Any] = {"model": MODEL, **draw(extra_fields)}
    if endpoint == "chat/completions":
        body["messages"] = [{"role": "user", "content": draw(text)}]
    elif endpoint == "completions":
        body["prompt"] = draw(text | st.lists(text, max_size=3))
    else:
        body["input"] = draw(text | st.lists(text, min_size=1, max_size=3))
    if endpoint != "embeddings" and draw(st.booleans()):
        body["stream"] = draw(st.booleans())
        options = draw(st.none() | st.just({}) | st.fixed_dictionaries(
            {"include_usage": st.booleans()}))
        if options is not None or draw(st.booleans()):
            body["stream_options"] = options
    return endpoint, body


def deep(levels: int) -> bytes:
    return b'{"model": "fuzz-model", "messages": [1], "x": ' + b"[" * levels + b"]" * levels + b"}"


bodies = st.one_of(
    st.binary(max_size=512),
    json_values.flatmap(serialized),
    valid_requests().flatmap(lambda request: serialized(request[1])),
    # Around what orjson writes (254), what the gateway edits (512), the recursion limit
    # (1,000) and what orjson reads (1,024).
    (st.integers(1, 1100) | st.sampled_from([253, 254, 510, 511, 512, 970, 980, 990, 1022, 1023])
     ).map(deep),
    st.builds(lambda body, raw: body[:-1] + b", " + raw[1:] if raw != b"{}" else body,
              valid_requests().flatmap(lambda request: serialized(request[1])),
              st.dictionaries(st.sampled_from(["model", "messages", "prompt", "input", "stream"]),
                              json_values, min_size=1, max_size=2).flatmap(serialized)),
    st.integers(MAX_BODY - 200, MAX_BODY + 200).map(
        lambda size: b'{"model": "fuzz-model", "prompt": "' + b"x" * size + b'"}'),
)
paths = st.one_of(
    st.builds(lambda prefix, endpoint: f"{prefix}/{endpoint}", st.sampled_from(PREFIXES),
              st.sampled_from([*ENDPOINTS, "models", f"models/{MODEL}", "models/x/y", "chat"])),
    st.sampled_from(["/status", "/resource_server/status", "/health", "/metrics", "/", "*",
                     "/v1", "/v1/", "//v1/models", "/v1/../v1/models", "/v1/models?x=1#f",
                     "http://gateway/v1/models", "/v1/chat/completions?stream=true"]),
    st.lists(text, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.lists(st.binary(max_size=8), max_size=4).map(
        lambda parts: "/v1/" + "/".join(quote_from_bytes(part, safe="") for part in parts)),
    st.binary(max_size=12).map(lambda part: f"/v1/models/{quote_from_bytes(part)}"),
).map(lambda path: path.encode("utf-8"))
#: Any bytes but the line breaks that would end the header (most are refused by the parser).
header_bytes = st.binary(max_size=40).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))
#: What a header may hold: visible ASCII, spaces, tabs and bytes above 0x7f.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, include_characters="\t",
                                    exclude_characters="\x7f"), max_size=40).map(
    lambda value: value.encode("latin-1"))
header_values = st.one_of(header_text, header_text, header_bytes)  # mostly what parses
header_names = st.one_of(
    st.sampled_from([b"Expect", b"Accept", b"Accept-Encoding", b"X-Forwarded-For", b"Cookie",
                     b"Upgrade", b"Connection", b"Content-Encoding", b"Transfer-Encoding"]),
    st.from_regex(rb"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}\Z"),
    header_bytes.filter(lambda name: b":" not in name),
)
authorization = st.one_of(
    st.just(b"Bearer " + TEST_KEY.encode()), st.just(b"bearer " + TEST_KEY.encode() + b" "),
    st.just(b"Bearer"), st.just(b"Basic " + TEST_KEY.encode()),
    header_values.map(lambda value: b"Bearer " + value), header_values,
)
#: Mostly the methods the API has, then others the parser knows (random ones are the next
#: test's: the parser refuses them before any route).
methods = st.sampled_from([b"GET", b"POST", b"GET", b"POST", b"HEAD", b"PUT", b"DELETE",
                           b"PATCH", b"OPTIONS", b"TRACE", b"PROPFIND", b"CONNECT"])
content_types = st.sampled_from([b"application/json", b"application/json; charset=utf-8",
                                 b"text/plain", b"multipart/form-data; boundary=x",
                                 b"application/x-www-form-urlencoded", b""])


# -- the properties ---------------------------------------------------------------------------

_ids = itertools.count()


@settings(FUZZ, max_examples=600)
@given(endpoint=st.sampled_from([f"{p}/{e}" for p in PREFIXES for e in ENDPOINTS]), body=bodies)
async def test_any_body(gateway: Fuzzed, endpoint: str, body: bytes) -> None:
    request = http_request(b"POST", endpoint.encode(), [
        (b"Authorization", b"Bearer " + TEST_KEY.encode()), (b"Content-Type", b"application/json")],
        body)
    check(await exchange(gateway, request))
    await still_serving(gateway)


@settings(FUZZ, max_examples=400)
@given(request=valid_requests().flatmap(lambda r: st.tuples(st.just(r), serialized(r[1]))),
       prefix=st.sampled_from(PREFIXES[:3]))
async def test_a_valid_request_reaches_the_upstream_as_sent(
        gateway: Fuzzed, request: tuple[tuple[str, dict[str, Any]], bytes], prefix: str) -> None:
    (endpoint, body), raw = request
    rid = f"fuzz-{next(_ids)}"
    answer = await exchange(gateway, http_request(b"POST", f"{prefix}/{endpoint}".encode(), [
        (b"Authorization", b"Bearer " + TEST_KEY.encode()), (b"Content-Type", b"application/json"),
        (b"X-Request-Id", rid.encode())], raw))
    check(answer)
    assert answer.status == 200, answer
    expected = {**orjson.loads(raw), "model": UPSTREAM_MODEL}
    options = body.get("stream_options")
    if body.get("stream") and (options is None or isinstance(options, dict)):
        expected["stream_options"] = {**(options or {}), "include_usage": True}
    (received,) = [r for r in gateway.upstream.received
                   if {k.lower(): v for k, v in r.headers.items()}.get("x-request-id") == rid]
    assert received.body == expected
    if body.get("stream"):
        # The caller gets the stream it asked for: whole, and a usage chunk only if it asked.
        events = [line[6:] for line in answer.body.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]", answer
        chunks = [orjson.loads(event) for event in events[:-1]]
        assert all("error" not in chunk for chunk in chunks), answer
        asked = isinstance(options, dict) and options.get("include_usage") is True
        assert ["usage" in chunk for chunk in chunks] == [False] * (len(chunks) - asked) + [True] * asked


def _compressions() -> dict[str, Any]:
    raw_deflate = zlib.compressobj(wbits=-15)
    return {
        "none": lambda body: body,
        "gzip": gzip.compress,
        "zlib": zlib.compress,
        "raw-deflate": lambda body: raw_deflate.compress(body) + raw_deflate.flush(zlib.Z_FULL_FLUSH),
        "gzip-cut": lambda body: gzip.compress(body)[:-8],
        "gzip-twice": lambda body: gzip.compress(gzip.compress(body)),
    }


COMPRESSIONS = _compressions()
#: Which compression each Content-Encoding value announces.
MATCHING = {b"gzip": {"gzip"}, b"GZIP": {"gzip"}, b"deflate": {"zlib"}, b"identity": {"none"},
            b"": {"none"}}


@settings(FUZZ, max_examples=300)
@given(encoding=st.sampled_from([*MATCHING, b"x-gzip", b"br", b"zstd", b"compress", b"gzip, deflate",
                                 b"gzip, identity", b"chunked"]) | header_values,
       compression=st.sampled_from(sorted(COMPRESSIONS)), content_type=content_types,
       body=valid_requests().flatmap(lambda request: serialized(request[1])),
       chunked=st.booleans())
async def test_any_encoding(gateway: Fuzzed, encoding: bytes, compression: str,
                            content_type: bytes, body: bytes, chunked: bool) -> None:
    sent = COMPRESSIONS[compression](body)
    headers = [(b"Authorization", b"Bearer " + TEST_KEY.encode()), (b"Content-Type", content_type),
               (b"Content-Encoding", encoding)]
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
        sent = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                        for part in (sent[:7], sent[7:]) if part) + b"0\r\n\r\n"
    answer = await exchange(gateway, http_request(b"POST", b"/v1/completions", headers, sent,
                                                  length=not chunked))
    check(answer)
    if compression in MATCHING.get(encoding, ()):
        assert answer.status == 200, answer
    await still_serving(gateway)


#: Every route with its own method, half the time; any method on any path the rest.
routes = st.one_of(st.sampled_from(
    [(b"POST", f"{prefix}/{endpoint}".encode()) for prefix in PREFIXES for endpoint in ENDPOINTS]
    + [(b"GET", path.encode()) for path in ["/v1/models", f"/v1/models/{MODEL}", "/v1/models/x",
                                            "/resource_server/v1/models", "/status", "/health",
                                            "/resource_server/status", "/metrics"]]),
    st.tuples(methods, paths))


@settings(FUZZ, max_examples=600)
@given(route=routes, auth=st.one_of(st.just(b"Bearer " + TEST_KEY.encode()), authorization, st.none()),
       request_id=st.none() | st.from_regex(rb"\A[A-Za-z0-9._-]{1,70}\Z") | header_values,
       content_type=st.none() | content_types | header_values,
       extra=st.lists(st.tuples(header_names, st.just(b"100-continue") | header_values),
                      max_size=3),
       body=st.sampled_from([b"", CHAT]))
async def test_any_request_head(gateway: Fuzzed, route: tuple[bytes, bytes], auth: bytes | None,
                                request_id: bytes | None, content_type: bytes | None,
                                extra: list[tuple[bytes, bytes]], body: bytes) -> None:
    method, path = route
    headers = [(name, value) for name, value in [
        (b"Authorization", auth), (b"X-Request-Id", request_id), (b"Content-Type", content_type),
    ] if value is not None] + extra
    check(await exchange(gateway, http_request(method, path, headers, body)), method)
    await still_serving(gateway)


@settings(FUZZ, max_examples=200)
@given(line=st.binary(min_size=1, max_size=64), head=st.binary(max_size=200))
async def test_any_bytes_as_a_request(gateway: Fuzzed, line: bytes, head: bytes) -> None:
    # A request line and headers of any bytes; the blank line ends them, so that the parser
    # never waits for more.
    start = line.lstrip(b"\r\n") or b"X"
    answer = await exchange(gateway, start + b"\r\n" + head.replace(b"\r\n\r\n", b"") + b"\r\n\r\n")
    check(answer, start.split(b" ")[0])
    await still_serving(gateway)
