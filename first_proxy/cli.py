"""The ``first-proxy`` command line: serve, check, plugins, and the small tools around them."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .accesslog import ACCESS_LOGGER
from .config import GatewayConfig, load_config
from .errors import ConfigError
from .gateway import check_wiring
from .plugins import get_plugin_manager, list_plugins

__all__ = ["cli", "main"]

DEMO_URL_VARIABLE = "FIRST_PROXY_DEMO_URL"

config_option = click.option(
    "--config", "-c", "config_path", default="gateway.yaml", show_default=True,
    type=click.Path(dir_okay=False, path_type=Path), envvar="FIRST_PROXY_CONFIG",
    help="The gateway.yaml to use (or set FIRST_PROXY_CONFIG).",
)


def _load(config_path: Path) -> GatewayConfig:
    if not config_path.exists():
        raise click.ClickException(
            f"{config_path} does not exist. Pass --config PATH, or start from the gateway.yaml "
            "in the first-proxy repository.")
    try:
        return load_config(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="first-proxy")
def cli() -> None:
    """first-proxy: one OpenAI-compatible endpoint in front of HPC clusters, local vLLM
    servers and commercial APIs.

    \b
    Start here:
      first-proxy check           is gateway.yaml right?
      first-proxy serve --demo    serve it, with a built-in demo model
      first-proxy plugins         which plugins are installed
    """


@cli.command()
@config_option
@click.option("--host", help="Address to listen on [default: server.host in gateway.yaml].")
@click.option("--port", type=int, help="Port to listen on [default: server.port in gateway.yaml].")
@click.option("--demo", is_flag=True,
              help=f"Also start the bundled reference upstream and point ${DEMO_URL_VARIABLE} "
                   "at it, so the demo model answers with no real backend.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="warning and error leave out the access log.")
def serve(config_path: Path, host: str | None, port: int | None, demo: bool,
          log_level: str) -> None:
    """Serve the gateway described by gateway.yaml until Ctrl-C.

    Logs go to standard error, with a line per request (the access log; server.access_log
    in gateway.yaml turns it off). On SIGINT/SIGTERM it stops taking connections, lets
    requests in flight finish (server.shutdown_grace seconds), and writes the buffered
    access and request logs.
    """
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Access lines carry their own time and are written in batches, several to a record.
    plain = logging.StreamHandler()
    plain.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(plain)
    access.propagate = False
    try:
        asyncio.run(_serve(config_path, host, port, demo))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


async def _serve(config_path: Path, host: str | None, port: int | None, demo: bool) -> None:
    import signal

    from aiohttp import web

    from .app import create_app

    upstream = None
    if demo:
        from .testing.upstream import ReferenceUpstream

        upstream = ReferenceUpstream(models=["demo-model"])
        os.environ[DEMO_URL_VARIABLE] = await upstream.start()
        click.echo(f"demo upstream: serving demo-model at {upstream.url}")
    try:
        config = _load(config_path)
        # aiohttp's own access logger formats and writes a line per request; the gateway
        # writes its access log from the request-log rows instead (first_proxy.accesslog).
        runner = web.AppRunner(create_app(config), handler_cancellation=True,
                               shutdown_timeout=config.server.shutdown_grace, access_log=None)
        await runner.setup()
        _tune_gc()
        try:
            bind_host = host or config.server.host
            bind_port = config.server.port if port is None else port
            await web.TCPSite(runner, bind_host, bind_port).start()
            click.echo(f"first-proxy {__version__}: {len(config.models)} model(s) from "
                       f"{config.source}; OpenAI base URL http://{bind_host}:{bind_port}/v1 "
                       "(Ctrl-C stops)")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            click.echo("stopping: letting requests in flight finish")
        finally:
            await runner.cleanup()
    finally:
        if upstream is not None:
            await upstream.close()


#: Python's default (700) collects the youngest generation every few requests under load.
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Tune the garbage collector for a long-running server, once start-up is over.

    What exists by then (modules, configuration, plugins) is frozen out of later collections,
    and the youngest generation is collected less often; per request, a busy gateway would
    otherwise spend a large share of its time in the collector.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


@cli.command()
@config_option
def check(config_path: Path) -> None:
    """Check gateway.yaml: syntax, types, environment variables, backends, plugin settings.

    Exits 0 and prints a summary when it is right; otherwise prints every problem with its
    key path and exits 1.
    """
    config = _load(config_path)
    pm = get_plugin_manager(blocked=config.disabled_plugins)
    problems = check_wiring(config, pm)
    if problems:
        raise click.ClickException(str(ConfigError(config.source, problems)))
    targets = config.targets()
    backends = sorted({t.backend for t in targets})
    click.echo(f"{config.source}: OK: {len(config.models)} model(s), {len(targets)} target(s), "
               f"{len(config.auth.api_keys)} API key(s); backends: {', '.join(backends) or '-'}; "
               f"store: {config.store.split('://')[0]}")


@cli.command()
@config_option
@click.option("--all", "include_builtin", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(config_path: Path, include_builtin: bool, as_json: bool) -> None:
    """List the plugins that load: name, version and the hooks each implements.

    Plugins disabled in gateway.yaml (plugins.NAME.enabled: false) are left out when the
    file exists.
    """
    blocked = _load(config_path).disabled_plugins if config_path.exists() else frozenset()
    rows = list_plugins(get_plugin_manager(blocked=blocked), include_builtin=include_builtin)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No plugins installed. Install one, e.g. pip install ./plugins/"
                   "first_openai_direct, or pass --all to see the built-ins.")
        return
    _table(["plugin", "version", "hooks"],
           [[r["name"], r["version"] or "-", ", ".join(r["hooks"])] for r in rows])


@cli.command("hash-key")
@click.argument("key", required=False)
def hash_key(key: str | None) -> None:
    """Print the sha256 of an API key, for auth.api_keys[].sha256 in gateway.yaml.

    Reads the key from standard input when it is not given, so it stays out of shell history.
    """
    if key is None:
        key = sys.stdin.readline().strip() if not sys.stdin.isatty() else click.prompt(
            "API key", hide_input=True)
    if len(key) < 8:
        raise click.ClickException("API keys must be at least 8 characters long.")
    click.echo(hashlib.sha256(key.encode()).hexdigest())


@cli.command()
@config_option
@click.option("--limit", "-n", default=20, show_default=True, help="How many rows.")
def requests(config_path: Path, limit: int) -> None:
    """Show the newest rows of the request log (from the configured store)."""
    from .store import open_store

    config = _load(config_path)

    async def fetch() -> list[dict[str, Any]]:
        store = await open_store(config.store)
        try:
            return await store.recent_requests(limit)
        finally:
            await store.close()

    rows = asyncio.run(fetch())
    if not rows:
        click.echo("No requests logged yet.")
        return
    _table(
        ["time", "user", "model", "target", "status", "ms", "ttft", "tokens in/out"],
        [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])), r["user"] or "-",
          r["model"] or "-", r["target"] or "-", str(r["status"]), f"{r['latency_ms']:.0f}",
          f"{r['ttft_ms']:.0f}" if r["ttft_ms"] is not None else "-",
          f"{r['prompt_tokens'] or '-'}/{r['completion_tokens'] or '-'}"] for r in rows],
    )


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, [("-" * w) for w in widths], *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())


def main() -> None:
    pm = get_plugin_manager()
    pm.hook.register_commands(cli=cli)
    cli()
