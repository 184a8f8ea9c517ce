"""A typed facade over the plugin manager: how the core calls each hook.

pluggy has no async support, so the core walks the implementations itself, in pluggy's
order, and awaits whatever each returns. That also lets ``authenticate`` stop at the first
answer without starting the others.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from .errors import ConfigError, StartupError, one_line
from .types import Call, Denial, Identity, Status, Target, UpstreamResponse

if TYPE_CHECKING:
    from aiohttp import web

    from .gateway import Gateway

__all__ = ["Hooks", "registered_backends"]


class _PluginFailed(Exception):
    """The hook of the plugin ``plugin`` raised ``error``."""

    def __init__(self, plugin: str, error: Exception) -> None:
        super().__init__(f"{plugin}: {error}")
        self.plugin = plugin
        self.error = error


def registered_backends(pm: pluggy.PluginManager) -> dict[str, Callable[..., Any] | None]:
    """Backend name → its validator (or None), from every ``register_backends``."""
    found: dict[str, Callable[..., Any] | None] = {}

    def register(name: str, validate: Callable[..., Any] | None = None) -> None:
        found[name] = validate

    pm.hook.register_backends(register=register)
    return found


#: Answers of these exact types are never awaitable: no need to ask ``inspect.isawaitable``.
_PLAIN = frozenset({Identity, Denial, Status, UpstreamResponse, list, tuple, dict, str, int, bool})


def _awaitable(value: Any) -> bool:
    return type(value) not in _PLAIN and inspect.isawaitable(value)


class _Caller:
    """Calls one hook's implementations, each with only the arguments it asks for.

    Every hook the core calls this way takes ``gateway`` last: the caller is made for one
    gateway and adds it. The other arguments come positionally, in the hookspec's order; an
    implementation that takes them all, in that order, is called with them as they are.
    """

    def __init__(self, pm: pluggy.PluginManager, name: str, gateway: Gateway) -> None:
        hook = getattr(pm.hook, name)
        assert hook.spec.argnames[-1] == "gateway", name
        self._gateway = gateway
        # pluggy calls the last registered first; wrappers are for pluggy's own calls only.
        impls = [impl for impl in reversed(hook.get_hookimpls())
                 if not (impl.hookwrapper or impl.wrapper)]
        # What the request path runs: each function, how to pick its arguments (None: take
        # them all), and whether it is ``async def`` (its result is then surely awaited).
        self._calls = [(impl.function, _picker(hook.spec.argnames, impl.argnames),
                        inspect.iscoroutinefunction(impl.function)) for impl in impls]
        self._plugins = [impl.plugin_name for impl in impls]

    async def first(self, *args: Any) -> Any:
        """The first answer that is not None; later implementations are not called."""
        gateway = self._gateway
        for function, pick, is_async in self._calls:
            result = function(*args, gateway) if pick is None else function(*pick((*args, gateway)))
            if is_async or (result is not None and _awaitable(result)):
                result = await result
            if result is not None:
                return result
        return None

    async def all(self, *args: Any) -> list[Any]:
        """Every answer that is not None, calling one implementation after another."""
        gateway = self._gateway
        results = []
        for function, pick, is_async in self._calls:
            result = function(*args, gateway) if pick is None else function(*pick((*args, gateway)))
            if is_async or (result is not None and _awaitable(result)):
                result = await result
            if result is not None:
                results.append(result)
        return results

    async def each(self, *args: Any) -> None:
        """Call every implementation, one after another; a failure is raised as
        :class:`_PluginFailed`, naming the plugin."""
        gateway = self._gateway
        for plugin, (function, pick, _) in zip(self._plugins, self._calls):
            try:
                result = function(*args, gateway) if pick is None else function(
                    *pick((*args, gateway)))
                if inspect.isawaitable(result):
                    await result
            except Exception as e:
                raise _PluginFailed(plugin, e) from e

    async def first_of_all(self, *args: Any) -> Any:
        """Call every implementation; the first answer that is not None."""
        gateway = self._gateway
        found = None
        for function, pick, is_async in self._calls:
            result = function(*args, gateway) if pick is None else function(*pick((*args, gateway)))
            if is_async or (result is not None and _awaitable(result)):
                result = await result
            if found is None:
                found = result
        return found


def _picker(spec: Sequence[str],
            wanted: Sequence[str]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
    """A function that picks ``wanted`` out of arguments given in ``spec``'s order; None
    when ``wanted`` is all of them, in that order."""
    if tuple(wanted) == tuple(spec):
        return None
    positions = [spec.index(name) for name in wanted]
    if not positions:
        return lambda args: ()
    if len(positions) == 1:
        at = positions[0]
        return lambda args: (args[at],)
    return operator.itemgetter(*positions)


class Hooks:
    """The combination rules of each hook, in one place.

    The request-path hooks are the callers' own methods, bound: one call less per hook on
    every request. Each takes the hookspec's arguments but ``gateway``, and returns a
    coroutine.
    """

    def __init__(self, pm: pluggy.PluginManager, gateway: Gateway) -> None:
        self.pm = pm
        self.gateway = gateway
        #: ``authenticate(request)``: the first identity a plugin finds, or None.
        self.authenticate: Callable[[web.Request], Awaitable[Identity | None]] = \
            _Caller(pm, "authenticate", gateway).first
        #: ``authorize(identity, model, target)``: every plugin is asked; any denial wins.
        self.authorize: Callable[[Identity, str, Target | None], Awaitable[Denial | None]] = \
            _Caller(pm, "authorize", gateway).first_of_all
        #: ``check_limits(identity, model)``: every plugin is asked; any denial wins.
        self.check_limits: Callable[[Identity, str], Awaitable[Denial | None]] = \
            _Caller(pm, "check_limits", gateway).first_of_all
        #: ``select_target(model, candidates, statuses)``: the first plugin's order, or None
        #: when no plugin chose (keep the candidates' own order).
        self.select_target: Callable[[str, Sequence[Target], Mapping[str, Status]],
                                     Awaitable[Sequence[Target] | None]] = \
            _Caller(pm, "select_target", gateway).first
        #: ``dispatch(target, call)``: the answer of the first plugin that takes the target.
        self.dispatch: Callable[[Target, Call], Awaitable[UpstreamResponse | None]] = \
            _Caller(pm, "dispatch", gateway).first
        #: ``report_status(target)``: the first plugin's status of the target, or None.
        self.report_status: Callable[[Target], Awaitable[Status | None]] = \
            _Caller(pm, "report_status", gateway).first

    async def startup(self) -> None:
        """One plugin after another: each is started (awaited) before the next is called.

        A plugin that fails raises :class:`StartupError` naming it, or its own
        :class:`ConfigError` as it is.
        """
        try:
            await _Caller(self.pm, "startup", self.gateway).each()
        except _PluginFailed as failed:
            if isinstance(failed.error, ConfigError):
                raise failed.error from None
            raise StartupError(f"plugin {failed.plugin} could not start: "
                               f"{one_line(failed.error)}") from failed.error

    async def shutdown(self) -> None:
        await _Caller(self.pm, "shutdown", self.gateway).all()
