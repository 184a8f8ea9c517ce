"""The running gateway: configuration, plugins, backends, store, shared sessions, statuses."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import aiohttp
import pluggy
from aiohttp import web

from . import __version__
from .accesslog import ACCESS_LOGGER, AccessLog
from .backends import Backend, registered_backends
from .config import GatewayConfig, ModelConfig
from .errors import ConfigError, StartupError, UpstreamError, one_line
from .health import Health
from .hooks import Hooks
from .inflight import SHUTTING_DOWN, InFlight
from .metrics import Metrics
from .requestlog import RequestLog
from .status import combine
from .store import Store, open_store, store_label
from .types import RequestRecord, Status, Target

#: How the gateway names itself to upstreams.
USER_AGENT = f"first-proxy/{__version__}"

__all__ = ["Gateway", "check_wiring", "config_problems"]

log = logging.getLogger("first_proxy")


class Gateway:
    """Everything a request handler or a plugin needs, for the life of one application."""

    def __init__(self, config: GatewayConfig, pm: pluggy.PluginManager) -> None:
        self.config = config
        self.pm = pm
        self.hooks = Hooks(pm, self)
        self.metrics = Metrics()
        #: The latest status of each target (:attr:`Target.key`): its own and its cluster's.
        self.statuses: dict[str, Status] = {}
        #: What each target's backend last said of it, and each cluster's plugin of it.
        self.target_statuses: dict[str, Status] = {}
        self.cluster_statuses: dict[str, Status] = {}
        #: Failures in a row per target, and the cool-downs they earn (the pipeline reports
        #: every attempt; the built-in selection ranks a cooled-down target last).
        self.health = Health(config.status.cooldown_failures, config.status.cooldown_seconds,
                             config.status.cooldown_max_seconds)
        #: Cluster name -> its maintenance message, for clusters under maintenance.
        self.maintenance: dict[str, str] = {
            name: str(settings["maintenance"]) for name, settings in config.clusters.items()
            if settings.get("maintenance")}
        #: Per-gateway state for plugins; key it by your plugin's name.
        self.state: dict[str, Any] = {}
        self.store: Store | None = None
        self.request_log: RequestLog | None = None
        #: The access log, when ``server.access_log`` is on and its logger writes INFO lines.
        self.access_log: AccessLog | None = None
        self.started_at = time.time()
        self._backends: dict[str, Backend] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._lifespans = AsyncExitStack()
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
        """The one shared HTTP session for ``target``, opened on first use: it names itself
        ``first-proxy/<version>``, asks for answers uncompressed and keeps no cookies."""
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
                # Naming the gateway as the client, rather than leaving aiohttp's default out
                # with ``skip_auto_headers``, also spares aiohttp building a header set of
                # headers to skip on every request.
                headers={"Accept-Encoding": "identity", "User-Agent": USER_AGENT},
                # An upstream's cookies must not be kept and sent on behalf of other callers.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._sessions[target.key] = session
        return session

    def model(self, name: str) -> ModelConfig | None:
        return self.config.models.get(name)

    def clusters(self) -> list[str]:
        """Every cluster: those under ``clusters:`` in file order, then those only targets
        name (``local``, say)."""
        found = dict.fromkeys(self.config.clusters)
        found.update(dict.fromkeys(t.cluster for t in self.config.targets()))
        return list(found)

    def backend(self, target: Target) -> Backend:
        """The object serving ``target``'s backend."""
        try:
            return self._backends[target.backend]
        except KeyError:
            raise UpstreamError(f"no plugin serves backend {target.backend!r}") from None

    def push_status(self, cluster: str, status: Status) -> None:
        """Set ``cluster``'s status now (a job started, say) rather than at the next poll."""
        status.checked_at = status.checked_at or time.time()
        self.cluster_statuses[cluster] = status
        for target in self.config.targets():
            if target.cluster == cluster:
                self._combine(target)

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and every plugin's and backend's lifespan; on any failure, close
        what was opened (in reverse) and raise."""
        self.loop = asyncio.get_running_loop()
        problems = config_problems(self.config, self.pm)
        if problems:
            raise ConfigError(self.config.source, problems)
        backends, _ = registered_backends(self.pm, skip=self.config.disabled_plugins)
        self._backends = {name: found.backend for name, found in backends.items()}
        stack = self._lifespans
        try:
            self.store = await _open_store(self.config.store, self.hooks.migrations())
            stack.push_async_callback(self._close_store)
            self.request_log = RequestLog(self.store, self.config.request_log, self.metrics)
            self.request_log.start()
            stack.push_async_callback(self.request_log.aclose)
            if (self.config.server.access_log
                    and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)):
                self.access_log = AccessLog(self.loop)
                stack.callback(self.access_log.write)
            self.in_flight.start()
            stack.push_async_callback(self.in_flight.stop)
            stack.push_async_callback(self._close_sessions)
            for name, context in self.hooks.lifespans():
                await _enter(stack, f"plugin {name}", context)
            for name, found in backends.items():
                context = found.backend.lifespan(self)
                if context is not None:
                    await _enter(stack, f"backend {name} of plugin {found.plugin}", context)
        except BaseException:
            await stack.aclose()
            raise
        if self.config.targets():
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
        """Close the lifespans in reverse order, then the store (the request log flushed)."""
        if self._closing is not None:
            self._closing.cancel()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._lifespans.aclose()

    async def _close_store(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def _close_sessions(self) -> None:
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
        """Ask every backend about its targets and every cluster's plugin about it, at once."""
        by_cluster: dict[str, list[Target]] = {}
        for target in self.config.targets():
            by_cluster.setdefault(target.cluster, []).append(target)
        await asyncio.gather(
            *(self._check_target(t) for t in self.config.targets()),
            *(self._check_cluster(name, settings, by_cluster.get(name, []))
              for name, settings in self.config.clusters.items()))
        for target in self.config.targets():
            self._combine(target)

    async def _check_target(self, target: Target) -> None:
        backend = self._backends.get(target.backend)
        if backend is None:
            return
        try:
            async with asyncio.timeout(self.config.status.timeout):
                status = await backend.status(target, self)
        except Exception as e:  # a backend's failure is the target's status, not ours
            status = Status(reachable=False,
                            last_error=target.redact(f"{type(e).__name__}: {e}")[:500])
        if status is None:
            return
        status.checked_at = time.time()
        self.target_statuses[target.key] = status

    async def _check_cluster(self, name: str, settings: Mapping[str, Any],
                             targets: list[Target]) -> None:
        try:
            async with asyncio.timeout(self.config.status.timeout):
                status = await self.hooks.report_status(name, settings, targets)
        except Exception as e:  # the scheduler could not be read: the cluster's state is unknown
            status = Status(reachable=False, last_error=f"{type(e).__name__}: {e}"[:500])
        if status is None:
            return
        status.checked_at = status.checked_at or time.time()
        self.cluster_statuses[name] = status

    def _combine(self, target: Target) -> None:
        status = combine(self.target_statuses.get(target.key),
                         self.cluster_statuses.get(target.cluster), target.upstream_model)
        if status is None:
            return
        self.statuses[target.key] = status
        self.metrics.target_up.labels(target.model, target.name).set(1 if status.reachable else 0)

    async def _poll_statuses(self) -> None:
        while True:
            await self.refresh_statuses()
            await asyncio.sleep(self.config.status.interval)


async def _open_store(url: str, plugin_migrations: list[tuple[str, Any]]) -> Store:
    try:
        return await open_store(url, plugin_migrations)
    except Exception as e:
        if url.startswith("sqlite:///"):
            hint = ("Make sure its directory can be created and written, or set store: in "
                    "gateway.yaml to a path that can")
        else:
            hint = ("Check that PostgreSQL runs there and lets this user in, or fix store: in "
                    "gateway.yaml")
        raise StartupError(f"cannot open the store {store_label(url)}: {one_line(e)}. "
                           f"{hint}.") from e


async def _enter(stack: AsyncExitStack, name: str,
                 context: AbstractAsyncContextManager[Any]) -> None:
    """Enter a lifespan on ``stack``; one that fails raises :class:`StartupError` naming it
    (or its own :class:`ConfigError` as it is)."""
    try:
        await stack.enter_async_context(_Guarded(name, context))
    except ConfigError:
        raise
    except Exception as e:
        raise StartupError(f"{name} could not start: {one_line(e)}") from e


class _Guarded:
    """A plugin's lifespan whose failure to close is logged, so the others still close."""

    def __init__(self, name: str, context: AbstractAsyncContextManager[Any]) -> None:
        self.name = name
        self.context = context

    async def __aenter__(self) -> Any:
        return await self.context.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool:
        try:
            return bool(await self.context.__aexit__(*exc))
        except Exception:
            log.exception("%s failed to stop cleanly", self.name)
            return False


def config_problems(config: GatewayConfig, pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """Everything wrong with ``config`` for the plugins of ``pm``, in file order.

    That is what reading the file found (``config.problems``) and what :func:`check_wiring`
    finds, leaving out what it says about a key the reading already reported: the value
    there is one the file got wrong, not one the plugins cannot serve.
    """
    found = list(config.problems)
    reported = {path for path, _ in found}
    for problem in check_wiring(config, pm):
        if not any(_within(problem[0], path) for path in reported):
            found.append(problem)
    return config.in_file_order(found)


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))


def check_wiring(config: GatewayConfig, pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """What gateway.yaml asks of plugins that they cannot give: unknown plugin sections,
    unknown or doubly registered backends, what each backend finds wrong with its targets,
    targets on undeclared clusters, and what each plugin's ``check_config`` finds wrong with
    its settings."""
    problems: list[tuple[str, str]] = []
    names = {pm.get_name(p) for p in pm.get_plugins()}
    for name in config.plugins:
        if name not in names and name not in config.disabled_plugins:
            problems.append((f"plugins.{name}", "no installed plugin has this name (installed: "
                             f"{', '.join(sorted(n for n in names if n)) or 'none'}); "
                             "install it, or remove its section"))
    backends, found = registered_backends(pm, skip=config.disabled_plugins)
    problems.extend(found)
    known = ", ".join(sorted(backends)) or "none: install a backend plugin"
    for model in config.models.values():
        for i, target in enumerate(model.targets):
            path = f"models.{model.name}.targets[{i}]"
            if config.clusters and target.cluster != "local" and target.cluster not in config.clusters:
                problems.append((f"{path}.cluster", f"cluster {target.cluster!r} is not declared "
                                 f"under clusters: (declared: {', '.join(sorted(config.clusters))})"))
            if target.backend not in backends:
                problems.append((f"{path}.backend",
                                 f"no installed plugin dispatches backend {target.backend!r} "
                                 f"(installed backends: {known})"))
                continue
            problems.extend(backends[target.backend].backend.validate(target, path) or ())
    disabled = [p for p in pm.get_plugins() if pm.get_name(p) in config.disabled_plugins]
    check_config = pm.subset_hook_caller("check_config", remove_plugins=disabled)
    for answer in check_config(config=config):
        if inspect.isawaitable(answer):  # a coroutine would never run: say so
            getattr(answer, "close", lambda: None)()
            culprits = [i.plugin_name for i in check_config.get_hookimpls()
                        if inspect.iscoroutinefunction(i.function)]
            raise TypeError(f"check_config must be synchronous (def, not async def) and do no "
                            f"I/O; it returned an awaitable in: {', '.join(culprits) or '?'}")
        problems.extend(answer)
    return problems
