"""The ``first-proxy`` command line: serve, check, plugins, and the small tools around them."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import json
import logging
import os
import re
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import __version__
from .accesslog import ACCESS_LOGGER
from .config import GatewayConfig, read_config
from .errors import ConfigError, StartupError, one_line
from .gateway import config_problems
from .plugins import get_plugin_manager, list_plugins

__all__ = ["cli", "main"]

DEMO_URL_VARIABLE = "FIRST_PROXY_DEMO_URL"

config_option = click.option(
    "--config", "-c", "config_path", default="gateway.yaml", show_default=True,
    type=click.Path(dir_okay=False, path_type=Path), envvar="FIRST_PROXY_CONFIG",
    help="The gateway.yaml to use (or set FIRST_PROXY_CONFIG).",
)


def _load(config_path: Path) -> GatewayConfig:
    """gateway.yaml, valid; a ClickException listing its problems otherwise."""
    config = _read(config_path)
    if config.problems:
        raise click.ClickException(str(ConfigError(config.source, list(config.problems))))
    return config


def _read(config_path: Path) -> GatewayConfig:
    """gateway.yaml as far as it can be read, its problems in ``problems``."""
    if not config_path.exists():
        raise click.ClickException(
            f"{config_path} does not exist. Pass --config PATH, or start from the gateway.yaml "
            "in the first-proxy repository.")
    try:
        return read_config(config_path)
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
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port to listen on [default: server.port in gateway.yaml].")
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
    except StartupError as e:
        if log_level == "debug":
            traceback.print_exception(e)
            raise click.ClickException(str(e)) from None
        raise click.ClickException(f"{e} (--log-level debug shows the traceback)") from None


async def _serve(config_path: Path, host: str | None, port: int | None, demo: bool) -> None:
    import signal

    from aiohttp import web

    from .app import create_app
    from .server import GatewayRunner

    upstream = None
    if demo:
        from .testing.upstream import ReferenceUpstream

        upstream = ReferenceUpstream(models=["demo-model"], max_received=0)
        os.environ[DEMO_URL_VARIABLE] = await upstream.start()
        click.echo(f"demo upstream: serving demo-model at {upstream.url}")
    try:
        # Read as far as it goes: start-up reports the file's problems with the plugins'.
        config = _read(config_path)
        # aiohttp's own access logger formats and writes a line per request; the gateway
        # writes its access log from the request-log rows instead (first_proxy.accesslog).
        runner = GatewayRunner(create_app(config), access_log=None)
        await runner.setup()
        _tune_gc()
        try:
            bind_host = host or config.server.host
            bind_port = config.server.port if port is None else port
            try:
                await web.TCPSite(runner, bind_host, bind_port).start()
            except OSError as e:
                raise _cannot_listen(bind_host, bind_port, e) from e
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


def _cannot_listen(host: str, port: int, error: OSError) -> StartupError:
    if error.errno == errno.EADDRINUSE:
        return StartupError(
            f"{host}:{port} is already in use: pass --port with a free port (or set server.port "
            "in gateway.yaml), or stop the other process listening there.")
    reason = error.strerror or one_line(error)
    return StartupError(f"cannot listen on {host}:{port}: {reason}. Pass --host or --port "
                        "(or set server.host and server.port in gateway.yaml).")


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
    config = _read(config_path)
    pm = get_plugin_manager(blocked=config.disabled_plugins)
    problems = config_problems(config, pm)
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


def _statuses(ctx: click.Context, param: click.Parameter,
              value: str | None) -> tuple[int, int] | None:
    """``--status``: one code (``429``) or a class (``5xx``), as the lowest and highest status."""
    if value is None:
        return None
    if re.fullmatch(r"[1-5][0-9][0-9]", value):
        return int(value), int(value)
    if re.fullmatch(r"[1-5]xx", value.lower()):
        return int(value[0]) * 100, int(value[0]) * 100 + 99
    raise click.BadParameter(f"expected a status code such as 429 or a class such as 5xx, "
                             f"got {value!r}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--since``: a time ago (``10m``, ``2h``, ``1d``) or an ISO time, as a Unix time."""
    if value is None:
        return None
    ago = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value)
    if ago:
        return time.time() - float(ago[1]) * _UNITS[ago[2]]
    try:
        return datetime.fromisoformat(value).timestamp()  # no zone: local time
    except ValueError:
        raise click.BadParameter(f"expected a time ago such as 30s, 10m, 2h or 1d, or an ISO "
                                 f"time such as 2025-06-01T14:30, got {value!r}") from None


@cli.command()
@config_option
@click.option("--id", "request_id", metavar="ID",
              help="The request with this id: the X-Request-Id header of its answer.")
@click.option("--user", help="Only this user's requests, as the table shows them (key:alice).")
@click.option("--model", help="Only requests for this model.")
@click.option("--status", "statuses", metavar="CODE", callback=_statuses,
              help="Only this status (429) or class of statuses (5xx).")
@click.option("--since", metavar="WHEN", callback=_since,
              help="Only requests since then: 10m or 2h ago, or an ISO time.")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many rows at most.")
@click.option("--json", "as_json", is_flag=True, help="Print each row as a line of JSON.")
def requests(config_path: Path, request_id: str | None, user: str | None, model: str | None,
             statuses: tuple[int, int] | None, since: float | None, limit: int,
             as_json: bool) -> None:
    """Show rows of the request log (from the configured store), newest first.

    A caller reporting a problem can quote the X-Request-Id header of the answer; --id finds
    that request, and exits 1 when the log has no such request.
    """
    from .store import RequestQuery, open_store, store_label

    config = _load(config_path)
    query = RequestQuery(request_id=request_id, user=user, model=model, statuses=statuses,
                         since=since, limit=limit)

    async def fetch() -> list[dict[str, Any]]:
        store = await open_store(config.store)
        try:
            return await store.find_requests(query)
        finally:
            await store.close()

    rows = asyncio.run(fetch())
    filtered = any(value is not None for value in (user, model, statuses, since))
    if not rows and request_id is not None:
        raise click.ClickException(
            f"no request with id {request_id!r}{' that matches the filters' if filtered else ''}"
            f" in the request log at {store_label(config.store)}. Check the id (the answer's "
            "X-Request-Id header) and --config; a request is logged up to "
            "request_log.flush_interval seconds after its answer.")
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("No requests match the filters." if filtered else "No requests logged yet.")
        return
    _table(
        ["request_id", "time", "user", "model", "target", "status", "error", "ms", "ttft",
         "tokens in/out"],
        [[r["request_id"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])),
          _cell(r["user"]), _cell(r["model"]), _cell(r["target"]), str(r["status"]),
          _cell(r["error"]), f"{r['latency_ms']:.0f}",
          f"{r['ttft_ms']:.0f}" if r["ttft_ms"] is not None else "-",
          f"{_cell(r['prompt_tokens'])}/{_cell(r['completion_tokens'])}"] for r in rows],
    )


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, [("-" * w) for w in widths], *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())


def main() -> None:
    pm = get_plugin_manager()
    pm.hook.register_commands(cli=cli)
    cli()
