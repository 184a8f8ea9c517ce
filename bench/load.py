"""The load generators: ``wrk`` for throughput and latency, a lean asyncio client for TTFT.

wrk (C, one thread, epoll) costs far less CPU per request than any Python client, so on a
two-core machine the proxy under test stays the bottleneck. Time to first token needs a
client that sees the first SSE event arrive; ``measure_ttft`` is a small HTTP/1.1 client on
raw asyncio streams that timestamps it. ``send`` uses the same client to send an exact
number of requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["LoadResult", "TtftResult", "find_wrk", "measure_ttft", "run_wrk", "send"]

WRK_INSTALL = ("wrk is not installed. Install it with `apt-get install -y wrk` (Debian/Ubuntu), "
               "`brew install wrk` (macOS) or from https://github.com/wg/wrk, or pass --wrk PATH.")

_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"

done = function(summary, latency, requests)
  local errors = summary.errors
  local f = io.open([==[{out}]==], "w")
  f:write(string.format(
    '{{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, '
    .. '"non2xx": %d}}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout, errors.status))
  f:close()
end
"""


@dataclass
class LoadResult:
    """One wrk run: completed requests per second and latency percentiles in milliseconds."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


@dataclass
class TtftResult:
    """Time to the first SSE event and to the end of the stream, in milliseconds."""

    p50_ms: float
    p99_ms: float
    total_p50_ms: float
    requests: int
    errors: int


def find_wrk(given: str | None = None) -> str:
    """The wrk executable, or SystemExit with how to install it."""
    found = shutil.which(given or "wrk")
    if found is None:
        raise SystemExit(WRK_INSTALL)
    return found


def pin(core: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child process to ``core`` (None: leave it unpinned)."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def run_wrk(wrk: str, url: str, body: bytes, key: str, *, connections: int, seconds: float,
            workdir: Path, core: int | None) -> LoadResult:
    """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``seconds``."""
    out = workdir / f"wrk-{time.monotonic_ns()}.json"
    script = workdir / "post.lua"
    script.write_text(_LUA.format(body=body.decode(), key=key, out=out))
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(script), url]
    done = subprocess.run(command, preexec_fn=pin(core), capture_output=True, text=True,
                          timeout=seconds + 30)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(out.read_text())
    return LoadResult(
        rps=data["requests"] / (data["duration_us"] / 1e6), p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000, requests=data["requests"],
        errors=data["socket_errors"] + data["non2xx"])


def _request(url: str, body: bytes, key: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return host, port, head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[bool, bool, float, float]:
    """One request on a keep-alive connection: (a 200, a whole SSE stream, seconds to the
    first event, seconds to the end)."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    ok = head.startswith(b"HTTP/1.1 200")
    body = bytearray()
    first = 0.0
    if b"transfer-encoding: chunked" in head.lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += (await reader.readexactly(size + 2))[:-2]
            if not first and b"\n\n" in body:
                first = time.perf_counter()
    else:
        lower = head.lower()
        at = lower.index(b"content-length:") + 15
        body += await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
    ended = time.perf_counter()
    whole = bool(first) and body.endswith(b"data: [DONE]\n\n")
    return ok, whole, (first or ended) - started, ended - started


async def _ttft(url: str, body: bytes, key: str, concurrency: int,
                seconds: float) -> TtftResult:
    host, port, request = _request(url, body, key)
    # One stream first, to learn how long a stream lasts; the clients then start that long
    # divided by their number apart, so that requests arrive spread out, as from independent
    # users, rather than all in the same instant every time the streams end together.
    reader, writer = await asyncio.open_connection(host, port)
    try:
        ok, whole, _, length = await _exchange(reader, writer, request)
    finally:
        writer.close()
    if not (ok and whole):
        raise RuntimeError(f"no whole SSE stream from {url}")
    stagger = length / concurrency
    ttfts: list[float] = []
    totals: list[float] = []
    errors = 0
    begin = time.perf_counter() + length  # every client has started by then
    deadline = begin + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        await asyncio.sleep(i * stagger)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                counted = time.perf_counter() >= begin
                ok, whole, first, total = await _exchange(reader, writer, request)
                if not (ok and whole):
                    errors += 1
                elif counted:
                    ttfts.append(first)
                    totals.append(total)
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    if len(ttfts) < 2:
        raise RuntimeError(f"too few streamed answers from {url} to measure")
    cuts = statistics.quantiles(ttfts, n=100)
    return TtftResult(p50_ms=statistics.median(ttfts) * 1000, p99_ms=cuts[98] * 1000,
                      total_p50_ms=statistics.median(totals) * 1000, requests=len(ttfts),
                      errors=errors)


def measure_ttft(url: str, body: bytes, key: str, *, concurrency: int,
                 seconds: float) -> TtftResult:
    """Stream ``body`` from ``url`` with ``concurrency`` closed-loop clients for ``seconds``.

    The clients start staggered over the length of one stream (see ``_ttft``).
    """
    return asyncio.run(_ttft(url, body, key, concurrency, seconds))


async def _send(url: str, body: bytes, key: str, requests: int, connections: int,
                stream: bool) -> int:
    host, port, request = _request(url, body, key)
    left, failed = requests, 0

    async def worker() -> None:
        nonlocal left, failed
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while left > 0:
                left -= 1
                ok, whole, _, _ = await _exchange(reader, writer, request)
                failed += not (ok and (whole or not stream))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, requests))))
    return failed


def send(url: str, body: bytes, key: str, *, requests: int, connections: int,
         stream: bool) -> int:
    """POST ``body`` to ``url`` exactly ``requests`` times over ``connections`` keep-alive
    connections; how many answers were not a 200 (with ``stream``, a 200 with a whole SSE
    stream)."""
    return asyncio.run(_send(url, body, key, requests, connections, stream))
