"""The Globus Compute path, measured: what the gateway adds to a task's round trip, and how
long a streamed chunk takes from the function to the caller.

All on this machine: the fake Compute web service and its AMQP broker
(``first_proxy.testing.globus_compute``), the endpoint software's ``ProcessPoolEngine``
running the real inference function, an upstream standing in for vLLM, the gateway in a
process of its own, and the load in another. Needs ``first-globus-compute[testing]``.

    .venv/bin/python bench/globus_compute.py            # about three minutes

The baseline is the same task sent the same way (the plugin's executors) with no gateway in
front, so the difference is the gateway's own cost: the HTTP hop, authentication, routing,
the backend's work, the request log. Each client waits a random time before each request so
that requests do not fall into step with the result watcher's 50 ms tick: 150-250 ms at
c=1, a user who never makes the submissions wait for their turn; 0-50 ms at c=16, where
tasks do wait for the next submission and go out in batches.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

KEY = "sk-bench-0123456789"
MODEL = "bench-model"
#: A streamed answer: this many events, one every EVENT_GAP_S (50 tokens/s).
EVENTS = 20
EVENT_GAP_S = 0.02
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}]}
ANSWER = {"id": "cmpl-bench", "object": "chat.completion", "created": 0, "model": MODEL,
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "Something."}}],
          "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


# -- the upstream (vLLM's stand-in) -----------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(ANSWER)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(EVENTS):
        await asyncio.sleep(EVENT_GAP_S)
        event = {"choices": [{"index": 0, "delta": {"content": f" w{i}"}}], "sent_at": time.time()}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def start_upstream() -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


# -- the gateway process ----------------------------------------------------------------------


def serve_gateway(args: argparse.Namespace) -> None:
    from first_globus_compute.plugin import GlobusComputePlugin
    from first_globus_compute.streams import CALLBACK_ROUTE
    from globus_sdk import AccessTokenAuthorizer

    from first_proxy.app import create_app
    from first_proxy.config import load_config
    from first_proxy.keys import GATEWAY
    from first_proxy.testing.globus_compute import compute_client

    logging.basicConfig(level=logging.WARNING)
    plugin = GlobusComputePlugin(make_client=functools.partial(
        compute_client, args.compute_url, AccessTokenAuthorizer(args.token)))
    app = create_app(load_config(args.config), load_entrypoints=False, plugins=[plugin])
    # Until the core mounts the routes plugins declare: the streams' callback route.
    app.router.add_post(CALLBACK_ROUTE, plugin.backend.callback(app[GATEWAY]))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                handler_cancellation=True)


# -- the load process -------------------------------------------------------------------------


async def _clients(concurrency: int, requests: int, one: Any) -> list[Any]:
    """``requests`` calls of ``one()`` from ``concurrency`` clients, each starting at random."""
    results: list[Any] = []
    pause = (0.15, 0.25) if concurrency == 1 else (0.0, 0.05)

    async def client(count: int) -> None:
        for _ in range(count):
            await asyncio.sleep(random.uniform(*pause))
            results.append(await one())

    await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
    return results


async def load(args: argparse.Namespace) -> list[Any]:
    if args.mode == "direct":
        return await _direct(args)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"Authorization": f"Bearer {KEY}"}) as http:
        url = f"{args.gateway}/v1/chat/completions"
        if args.mode == "gateway":
            async def one() -> float:
                started = time.perf_counter()
                async with http.post(url, json=CHAT) as answer:
                    assert answer.status == 200, await answer.text()
                    await answer.read()
                return (time.perf_counter() - started) * 1000
        else:
            async def one() -> tuple[float, list[float]]:
                started = time.perf_counter()
                first, delays = 0.0, []
                async with http.post(url, json={**CHAT, "stream": True}) as answer:
                    assert answer.status == 200, await answer.text()
                    async for line in answer.content:
                        if line.startswith(b"data: {"):
                            delays.append((time.time() - json.loads(line[6:])["sent_at"]) * 1000)
                            first = first or (time.perf_counter() - started) * 1000
                assert len(delays) == EVENTS, delays
                return first, delays
        return await _clients(args.concurrency, args.requests, one)


async def _direct(args: argparse.Namespace) -> list[float]:
    """The same task through the plugin's executor, with no gateway in front."""
    from first_globus_compute import executors
    from globus_sdk import AccessTokenAuthorizer

    from first_proxy.testing.globus_compute import compute_client

    executors.RESULT_POLL_S = args.poll
    pool = executors.Executors(functools.partial(
        compute_client, args.compute_url, AccessTokenAuthorizer(args.token)))
    body = json.dumps(CHAT)

    async def one() -> float:
        started = time.perf_counter()
        _, future = await pool.submit(args.endpoint, args.function,
                                      ("chat/completions", body, args.api_port, 30.0, None, None))
        result = await asyncio.wrap_future(future)
        assert result["status"] == 200, result
        return (time.perf_counter() - started) * 1000

    try:
        await one()  # the executor and its result watcher start: not measured
        return await _clients(args.concurrency, args.requests, one)
    finally:
        await pool.aclose()


# -- the orchestra ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _role(*argv: str) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    if process.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({process.returncode})")
    return json.loads(out)


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"n": len(values), "p50": statistics.median(values),
            "p99": values[min(len(values) - 1, round(0.99 * len(values)))],
            "mean": statistics.fmean(values)}


async def orchestrate(args: argparse.Namespace) -> None:
    from first_globus_compute import remote
    from globus_compute_sdk.serialize import PureSourceTextInspect

    from first_proxy.testing.globus_compute import FakeComputeService, LocalEndpoint

    workdir = Path(tempfile.mkdtemp(prefix="bench-compute-"))
    upstream, api_port = await start_upstream()
    with LocalEndpoint(workdir / "endpoint", workers=args.workers) as engine:
        async with FakeComputeService(engine) as service:
            endpoint = service.add_endpoint()
            client = await asyncio.to_thread(
                service.client, code_serialization_strategy=PureSourceTextInspect())
            function = await asyncio.to_thread(client.register_function, remote.inference)
            port = free_port()
            gateway_url = f"http://127.0.0.1:{port}"
            config = workdir / "gateway.yaml"
            config.write_text(json.dumps({
                "server": {"host": "127.0.0.1", "port": port},
                "store": f"sqlite:///{workdir}/bench.db",
                "auth": {"api_keys": [{"name": "bench", "key": KEY}]},
                "status": {"interval": 3600},
                "plugins": {"first_globus_compute": {
                    "client_id": "bench", "client_secret": "bench", "callback_url": gateway_url}},
                "models": {MODEL: {"targets": [{
                    "name": "local", "backend": "globus_compute", "endpoint": endpoint,
                    "function": function, "api_port": api_port}]}}}))
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "gateway", "--config", str(config), "--port", str(port),
                "--compute-url", service.url, "--token", service.token)
            try:
                await _wait_for(f"{gateway_url}/health")
                common = ["--compute-url", service.url, "--token", service.token,
                          "--endpoint", endpoint, "--function", function,
                          "--api-port", str(api_port), "--gateway", gateway_url]
                rows = await _measure(common, args)
            finally:
                gateway.terminate()
                await gateway.wait()
    await upstream.cleanup()
    print(_report(rows, args))


async def _measure(common: list[str], args: argparse.Namespace) -> dict[str, Any]:
    async def run(mode: str, concurrency: int, requests: int, poll: float = 0.05) -> Any:
        return await _role("load", "--mode", mode, "--concurrency", str(concurrency),
                           "--requests", str(requests), "--poll", str(poll), *common)

    # Warm up: engine workers, executors, connections, the request log's table.
    for mode in ("direct", "gateway", "stream"):
        await run(mode, 16, 64)
    rows: dict[str, Any] = {}
    n1, n16 = args.requests, args.requests * 4
    for _ in range(args.rounds):
        for key, mode, concurrency, n in (("direct c=1", "direct", 1, n1),
                                          ("gateway c=1", "gateway", 1, n1),
                                          ("direct c=16", "direct", 16, n16),
                                          ("gateway c=16", "gateway", 16, n16)):
            rows.setdefault(key, []).extend(await run(mode, concurrency, n))
    rows["direct c=1, SDK's 0.5 s result polling"] = await run("direct", 1, n1 // 2, poll=0.5)
    for concurrency in (1, 16):
        streams = await run("stream", concurrency, 16 * concurrency if concurrency > 1 else 32)
        rows[f"stream c={concurrency}"] = streams
    return rows


async def _wait_for(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"the gateway did not answer {url}")


def _report(rows: dict[str, Any], args: argparse.Namespace) -> str:
    def ms(value: float) -> str:
        return f"{value:.1f}"

    lines = ["| path | requests | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|"]
    for key in ("direct c=1", "gateway c=1", "direct c=16", "gateway c=16",
                "direct c=1, SDK's 0.5 s result polling"):
        s = _stats(rows[key])
        lines.append(f"| {key} | {s['n']} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['mean'])} |")
    lines += ["", "| added by the gateway | p50 ms | mean ms |", "|---|---:|---:|"]
    for c in (1, 16):
        direct, through = _stats(rows[f"direct c={c}"]), _stats(rows[f"gateway c={c}"])
        lines.append(f"| c={c} | {ms(through['p50'] - direct['p50'])} | "
                     f"{ms(through['mean'] - direct['mean'])} |")
    lines += ["", "| streamed, 20 events 20 ms apart | streams | chunk to caller p50 ms | p99 ms "
              "| first chunk p50 ms |", "|---|---:|---:|---:|---:|"]
    for c in (1, 16):
        streams = rows[f"stream c={c}"]
        chunks = _stats([d for _, delays in streams for d in delays])
        first = _stats([f for f, _ in streams])
        lines.append(f"| c={c} | {len(streams)} | {ms(chunks['p50'])} | {ms(chunks['p99'])} | "
                     f"{ms(first['p50'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="run", choices=["run", "gateway", "load"])
    parser.add_argument("--requests", type=int, default=96,
                        help="requests per round at c=1 (four times as many at c=16)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=20, help="engine worker processes")
    # for the roles the orchestra starts
    for option in ("--config", "--compute-url", "--token", "--endpoint", "--function",
                   "--gateway", "--mode"):
        parser.add_argument(option, help=argparse.SUPPRESS)
    for option in ("--port", "--api-port", "--concurrency"):
        parser.add_argument(option, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, default=0.05, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "gateway":
        serve_gateway(args)
    elif args.role == "load":
        print(json.dumps(asyncio.run(load(args))))
    else:
        asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
