"""A typed facade over the plugin manager: how the core calls each hook, and how answers combine.

pluggy has no async support, so the core walks the implementations itself, in pluggy's
order, and awaits whatever each returns. That also lets ``authenticate`` stop at the first
answer without starting the others. pluggy's wrappers cannot be honoured that way; a plugin
that declares one for a hook the core calls is refused at start-up, never silently ignored.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from .errors import PluginError
from .types import Call, Denial, Identity, Status, Target

if TYPE_CHECKING:
    from aiohttp import web

    from .limits import Lease
    from .surfaces import Surface

__all__ = ["Hooks", "RouteSpec"]

#: Answers of these exact types are never awaitable: no need to ask ``inspect.isawaitable``.
_PLAIN = frozenset({Identity, Denial, Status, list, tuple, dict, str, int, bool})
_isawaitable = inspect.isawaitable


def _impls(pm: pluggy.PluginManager, name: str) -> list[pluggy.HookImpl]:
    """The implementations of hook ``name`` in calling order; wrappers refused."""
    impls = list(reversed(getattr(pm.hook, name).get_hookimpls()))
    wrappers = [impl.plugin_name for impl in impls if impl.hookwrapper or impl.wrapper]
    if wrappers:
        raise PluginError(
            f"{', '.join(wrappers)} implements {name} as a pluggy wrapper, which first-proxy "
            "cannot honour for the hooks it calls itself; write a plain implementation, with "
            "tryfirst=True or trylast=True for its place in the order")
    return impls


class _Caller:
    """Calls one hook's implementations, each with only the arguments it asks for.

    Every hook the core calls this way takes ``gateway`` last: the caller is made for one
    gateway and adds it. The other arguments come positionally, in the hookspec's order; an
    implementation that takes them all, in that order, is called with them as they are.
    """

    def __init__(self, pm: pluggy.PluginManager, name: str, gateway: Any) -> None:
        spec = getattr(pm.hook, name).spec.argnames
        assert spec[-1] == "gateway", name
        self._gateway = gateway
        # What the request path runs: each function, how to pick its arguments (None: take
        # them all), and whether it is ``async def`` (its result is then surely awaited).
        self._calls = [(impl.function, _picker(spec, impl.argnames),
                        inspect.iscoroutinefunction(impl.function))
                       for impl in _impls(pm, name)]

    async def first(self, *args: Any) -> Any:
        """The first answer that is not None; later implementations are not called."""
        gateway = self._gateway
        for function, pick, is_async in self._calls:
            result = function(*args, gateway) if pick is None else function(*pick((*args, gateway)))
            if is_async or (result is not None and type(result) not in _PLAIN
                            and _isawaitable(result)):
                result = await result
            if result is not None:
                return result
        return None

    async def first_of_all(self, *args: Any) -> Any:
        """Call every implementation; the first answer that is not None."""
        gateway = self._gateway
        found = None
        for function, pick, is_async in self._calls:
            result = function(*args, gateway) if pick is None else function(*pick((*args, gateway)))
            if is_async or (result is not None and type(result) not in _PLAIN
                            and _isawaitable(result)):
                result = await result
            if found is None:
                found = result
        return found

    async def until_denial(self, results: list[Any], *args: Any) -> list[Any]:
        """Every answer that is not None, stopping after the first :class:`Denial`; appended
        to ``results`` as they come, so that the caller has them if an implementation raises."""
        gateway = self._gateway
        for function, pick, is_async in self._calls:
            result = function(*args, gateway) if pick is None else function(*pick((*args, gateway)))
            if is_async or (result is not None and type(result) not in _PLAIN
                            and _isawaitable(result)):
                result = await result
            if result is not None:
                results.append(result)
                if isinstance(result, Denial):
                    break
        return results

    async def chain(self, model: str, order: Sequence[Target],
                    statuses: Mapping[str, Status]) -> Sequence[Target]:
        """Each implementation gets the order the previous one returned (None: unchanged)."""
        gateway = self._gateway
        for function, pick, is_async in self._calls:
            args = (model, order, statuses, gateway)
            result = function(*args) if pick is None else function(*pick(args))
            if is_async or (result is not None and type(result) not in _PLAIN
                            and _isawaitable(result)):
                result = await result
            if result is not None:
                order = result
        return order


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


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route a plugin adds through ``register_routes``."""

    plugin: str
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    auth: bool
    errors: Surface
    #: Whether the caller's credential may come as ``x-api-key`` (Anthropic's clients).
    x_api_key: bool = False


class Hooks:
    """The combination rules of each hook, in one place.

    The request-path hooks are the callers' own methods, bound: one call less per hook on
    every request. Each takes the hookspec's arguments but ``gateway``, and returns a
    coroutine.
    """

    def __init__(self, pm: pluggy.PluginManager, gateway: Any) -> None:
        self.pm = pm
        self.gateway = gateway
        #: ``authenticate(request, credential)``: the first identity a plugin finds, or None.
        self.authenticate: Callable[[web.Request, str | None], Awaitable[Identity | None]] = \
            _Caller(pm, "authenticate", gateway).first
        #: ``authorize(identity, model, target)``: every plugin is asked; any denial wins.
        self.authorize: Callable[[Identity, str, Target | None], Awaitable[Denial | None]] = \
            _Caller(pm, "authorize", gateway).first_of_all
        #: ``check_limits(answers, identity, model, call)``: the leases taken, ending with a
        #: Denial if one refused (the later plugins are then not asked), into ``answers``.
        self.check_limits: Callable[[list[Denial | Lease], Identity, str, Call],
                                    Awaitable[list[Denial | Lease]]] = \
            _Caller(pm, "check_limits", gateway).until_denial
        #: ``select_target(model, candidates, statuses)``: the order after every plugin's say.
        self.select_target: Callable[[str, Sequence[Target], Mapping[str, Status]],
                                     Awaitable[Sequence[Target]]] = \
            _Caller(pm, "select_target", gateway).chain
        #: ``report_status(cluster, settings, targets)``: the first plugin's status, or None.
        self.report_status: Callable[[str, Mapping[str, Any], Sequence[Target]],
                                     Awaitable[Status | None]] = \
            _Caller(pm, "report_status", gateway).first
        for name in ("register_backends", "register_routes", "register_migrations",
                     "check_config", "lifespan"):
            _impls(pm, name)  # refuse wrappers of the hooks called at start-up, too

    def lifespans(self) -> list[tuple[str, AbstractAsyncContextManager[Any]]]:
        """Each plugin's lifespan context manager, in calling order, with the plugin's name."""
        found = []
        for impl in _impls(self.pm, "lifespan"):
            context = impl.function(*[self.gateway for _ in impl.argnames])
            if context is None:
                continue
            if not hasattr(context, "__aenter__"):
                raise PluginError(f"{impl.plugin_name}'s lifespan returned {context!r}, not an "
                                  "async context manager (use contextlib.asynccontextmanager)")
            found.append((impl.plugin_name, context))
        return found

    def migrations(self) -> list[tuple[str, Sequence[str]]]:
        """Every plugin's ``(name, migrations)``, for the store to apply."""
        found: list[tuple[str, Sequence[str]]] = []

        def register(name: str, migrations: Sequence[str]) -> None:
            found.append((name, tuple(migrations)))

        self.pm.hook.register_migrations(register=register)
        return found

    def routes(self) -> list[RouteSpec]:
        """Every route plugins add."""
        from .surfaces import OPENAI

        found: list[RouteSpec] = []
        for impl in _impls(self.pm, "register_routes"):
            def register(method: str, path: str, handler: Any, *, auth: bool = True,
                         errors: Surface = OPENAI, x_api_key: bool = False,
                         _plugin: str = impl.plugin_name) -> None:
                found.append(RouteSpec(_plugin, method.upper(), path, handler, auth, errors,
                                       x_api_key))

            impl.function(*[register for _ in impl.argnames])
        return found
