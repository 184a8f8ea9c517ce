"""The baseline: the least an aiohttp proxy can do, with no auth, no routing and no log.

One shared ``ClientSession`` (the same connector settings as the gateway's per-target
session); the body is forwarded as it came; SSE is streamed chunk by chunk as it arrives.

    python bench/passthrough.py --port 9102 --upstream http://127.0.0.1:9101/v1
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

__all__ = ["create_app"]

_SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str) -> web.Application:
    """An application forwarding every ``POST /v1/...`` to ``upstream`` (a base URL ending in /v1)."""
    base = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session = request.app[_SESSION]
        async with session.post(f"{base}/{request.match_info['tail']}", data=body,
                                headers={"Content-Type": "application/json"}) as answer:
            content_type = answer.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                return web.Response(body=await answer.read(), status=answer.status,
                                    headers={"Content-Type": content_type})
            response = web.StreamResponse(status=answer.status,
                                          headers={"Content-Type": content_type})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def session_context(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=100, ttl_dns_cache=300)
        app[_SESSION] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        yield
        await app[_SESSION].close()

    app = web.Application()
    app.router.add_post("/v1/{tail:.+}", forward)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(session_context)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9102)
    parser.add_argument("--upstream", default="http://127.0.0.1:9101/v1",
                        help="Base URL of the upstream, ending in /v1.")
    args = parser.parse_args()
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None,
                print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
