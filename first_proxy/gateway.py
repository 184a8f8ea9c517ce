"""The running gateway: configuration, plugins, store, shared sessions, statuses, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pluggy
from aiohttp import web

from .accesslog import ACCESS_LOGGER, AccessLog
from .config import GatewayConfig, ModelConfig
from .errors import ConfigError
from .hooks import Hooks, registered_backends
from .inflight import SHUTTING_DOWN, InFlight
from .metrics import Metrics
from .requestlog import RequestLog, RequestRecord
from .store import Store, open_store
from .types import Status, Target

__all__ = ["Gateway", "check_wiring"]

log = logging.getLogger("first_proxy")


class Gateway:
    """Everything a request handler or a plugin needs, for the life of one application."""

    def __init__(self, config: GatewayConfig, pm: pluggy.PluginManager) -> None:
        self.config = config
        self.pm = pm
        self.hooks = Hooks(pm, self)
        self.metrics = Metrics()
        #: Latest ``report_status`` answer per :attr:`Target.key`.
        self.statuses: dict[str, Status] = {}
        #: Per-gateway state for plugins; key it by your plugin's name.
        self.state: dict[str, Any] = {}
        self.store: Store | None = None
        self.request_log: RequestLog | None = None
        #: The access log, when ``server.access_log`` is on and its logger writes INFO lines.
        self.access_log: AccessLog | None = None
        self.started_at = time.time()
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._poller: asyncio.Task[None] | None = None
        #: The tasks answering inference requests now, and their deadlines.
        self.in_flight = InFlight()
        self.metrics.in_flight.set_function(lambda: len(self.in_flight))
        self._closing: asyncio.Task[None] | None = None
        #: The event loop the gateway serves on, once started.
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- what plugins use ---------------------------------------------------------------

    def plugin_config(self, name: str) -> Mapping[str, Any]:
        """The ``plugins.<name>`` section of gateway.yaml (empty if absent)."""
        return self.config.plugins.get(name, {})

    def session(self, target: Target) -> aiohttp.ClientSession:
        """The one shared HTTP session for ``target``, opened on first use."""
        session = self._sessions.get(target.key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=target.max_connections, limit_per_host=target.max_connections,
                ttl_dns_cache=300,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=target.timeouts.connect),
                # Bodies are passed on as they come, so they must come uncompressed.
                auto_decompress=False,
                headers={"Accept-Encoding": "identity"},
                skip_auto_headers=("User-Agent",),
                # An upstream's cookies must not be kept and sent on behalf of other callers.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._sessions[target.key] = session
        return session

    def model(self, name: str) -> ModelConfig | None:
        return self.config.models.get(name)

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        problems = check_wiring(self.config, self.pm)
        if problems:
            raise ConfigError(self.config.source, problems)
        self.store = await open_store(self.config.store)
        self.request_log = RequestLog(self.store, self.config.request_log, self.metrics)
        self.request_log.start()
        if (self.config.server.access_log
                and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)):
            self.access_log = AccessLog(self.loop)
        self.in_flight.start()
        try:
            await self.hooks.startup()
        except BaseException:  # a plugin refused to start: release what the core opened
            await self._release()
            raise
        if self.pm.hook.report_status.get_hookimpls() and self.config.targets():
            self._poller = asyncio.create_task(self._poll_statuses(), name="first-proxy-status")

    def begin_shutdown(self) -> None:
        """Shutdown has begun: end whatever is still running shortly before the grace is over.

        Past the grace period aiohttp drops connections mid-answer. Just before it, the
        requests still in flight are cancelled with :data:`SHUTTING_DOWN`, so that a stream
        ends with an SSE error event and a waiting caller gets a 503 saying to retry.
        """
        grace = self.config.server.shutdown_grace
        self._closing = asyncio.create_task(self._end_requests(grace - min(1.0, grace / 4)))

    async def _end_requests(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.in_flight.cancel_all(SHUTTING_DOWN)

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.cancel()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        try:
            await self.hooks.shutdown()
        finally:
            await self._release()

    async def _release(self) -> None:
        await self.in_flight.stop()
        if self.access_log is not None:
            self.access_log.write()
        if self.request_log is not None:
            await self.request_log.aclose()
        if self.store is not None:
            await self.store.close()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def record(self, row: RequestRecord, request: web.Request | None = None) -> None:
        """Count a finished request and queue its log row and its access-log line (given the
        HTTP request it answered); never waits."""
        self.metrics.observe(row)
        if self.request_log is not None:
            self.request_log.add(row)
        if self.access_log is not None and request is not None:
            self.access_log.add(row, request.method, request.rel_url.raw_path)

    # -- status -------------------------------------------------------------------------

    async def refresh_statuses(self) -> None:
        """Ask ``report_status`` about every target now, all at once."""
        await asyncio.gather(*(self._check(t) for t in self.config.targets()))

    async def _check(self, target: Target) -> None:
        try:
            async with asyncio.timeout(self.config.status.timeout):
                status = await self.hooks.report_status(target)
        except Exception as e:  # a plugin's failure is the target's status, not ours
            status = Status(reachable=False,
                            last_error=target.redact(f"{type(e).__name__}: {e}")[:500])
        if status is None:
            return
        status.checked_at = time.time()
        self.statuses[target.key] = status
        self.metrics.target_up.labels(target.model, target.name).set(1 if status.reachable else 0)

    async def _poll_statuses(self) -> None:
        while True:
            await self.refresh_statuses()
            await asyncio.sleep(self.config.status.interval)


def check_wiring(config: GatewayConfig, pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """What gateway.yaml asks of plugins that they cannot give: unknown plugin sections,
    unknown backends, what each backend's validator finds wrong with its targets, and what
    each plugin's ``check_config`` finds wrong with its settings."""
    problems: list[tuple[str, str]] = []
    names = {pm.get_name(p) for p in pm.get_plugins()}
    for name in config.plugins:
        if name not in names and name not in config.disabled_plugins:
            problems.append((f"plugins.{name}", "no installed plugin has this name (installed: "
                             f"{', '.join(sorted(n for n in names if n)) or 'none'}); "
                             "install it, or remove its section"))
    backends = registered_backends(pm)
    known = ", ".join(sorted(backends)) or "none: install a backend plugin"
    for model in config.models.values():
        for i, target in enumerate(model.targets):
            path = f"models.{model.name}.targets[{i}]"
            if target.backend not in backends:
                problems.append((f"{path}.backend",
                                 f"no installed plugin dispatches backend {target.backend!r} "
                                 f"(installed backends: {known})"))
                continue
            validate = backends[target.backend]
            if validate is not None:
                problems.extend(validate(target, path) or ())
    disabled = [p for p in pm.get_plugins() if pm.get_name(p) in config.disabled_plugins]
    check_config = pm.subset_hook_caller("check_config", remove_plugins=disabled)
    for found in check_config(config=config):
        if inspect.isawaitable(found):  # a coroutine would never run: say so
            getattr(found, "close", lambda: None)()
            culprits = [i.plugin_name for i in check_config.get_hookimpls()
                        if inspect.iscoroutinefunction(i.function)]
            raise TypeError(f"check_config must be synchronous (def, not async def) and do no "
                            f"I/O; it returned an awaitable in: {', '.join(culprits) or '?'}")
        problems.extend(found)
    return problems
