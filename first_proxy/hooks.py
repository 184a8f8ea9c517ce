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

from .types import Call, Denial, Identity, Status, Target, UpstreamResponse

if TYPE_CHECKING:
    from aiohttp import web

    from .gateway import Gateway

__all__ = ["Hooks", "registered_backends"]


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

    The arguments come positionally, in the hookspec's order; an implementation that takes
    them all, in that order, is called with them as they are.
    """

    def __init__(self, pm: pluggy.PluginManager, name: str) -> None:
        hook = getattr(pm.hook, name)
        # pluggy calls the last registered first; wrappers are for pluggy's own calls only.
        impls = [impl for impl in reversed(hook.get_hookimpls())
                 if not (impl.hookwrapper or impl.wrapper)]
        # What the request path runs: each function, how to pick its arguments (None: take
        # them all), and whether it is ``async def`` (its result is then surely awaited).
        self._calls = [(impl.function, _picker(hook.spec.argnames, impl.argnames),
                        inspect.iscoroutinefunction(impl.function)) for impl in impls]

    async def first(self, *args: Any) -> Any:
        for function, pick, is_async in self._calls:
            result = function(*args) if pick is None else function(*pick(args))
            if is_async or (result is not None and _awaitable(result)):
                result = await result
            if result is not None:
                return result
        return None

    async def all(self, *args: Any) -> list[Any]:
        results = []
        for function, pick, is_async in self._calls:
            result = function(*args) if pick is None else function(*pick(args))
            if is_async or (result is not None and _awaitable(result)):
                result = await result
            if result is not None:
                results.append(result)
        return results

    async def first_of_all(self, *args: Any) -> Any:
        """Call every implementation; the first answer that is not None."""
        found = None
        for function, pick, is_async in self._calls:
            result = function(*args) if pick is None else function(*pick(args))
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
    """The combination rules of each hook, in one place."""

    def __init__(self, pm: pluggy.PluginManager, gateway: Gateway) -> None:
        self.pm = pm
        self.gateway = gateway
        self._authenticate = _Caller(pm, "authenticate")
        self._authorize = _Caller(pm, "authorize")
        self._limits = _Caller(pm, "check_limits")
        self._select = _Caller(pm, "select_target")
        self._dispatch = _Caller(pm, "dispatch")
        self._report = _Caller(pm, "report_status")

    async def startup(self) -> None:
        # One plugin after another: each is started (awaited) before the next is called.
        await _Caller(self.pm, "startup").all(self.gateway)

    async def shutdown(self) -> None:
        await _Caller(self.pm, "shutdown").all(self.gateway)

    # The request-path hooks hand back their caller's coroutine rather than wrap it in one
    # more: the result is awaited just the same.

    def authenticate(self, request: web.Request) -> Awaitable[Identity | None]:
        return self._authenticate.first(request, self.gateway)

    def authorize(self, identity: Identity, model: str,
                  target: Target | None) -> Awaitable[Denial | None]:
        return self._authorize.first_of_all(identity, model, target, self.gateway)

    def check_limits(self, identity: Identity, model: str) -> Awaitable[Denial | None]:
        return self._limits.first_of_all(identity, model, self.gateway)

    def select_target(self, model: str, candidates: Sequence[Target],
                      statuses: Mapping[str, Status]) -> Awaitable[Sequence[Target] | None]:
        """The order to try ``candidates`` in; None when no plugin chose (keep theirs)."""
        return self._select.first(model, candidates, statuses, self.gateway)

    def dispatch(self, target: Target, call: Call) -> Awaitable[UpstreamResponse | None]:
        return self._dispatch.first(target, call, self.gateway)

    async def report_status(self, target: Target) -> Status | None:
        return await self._report.first(target, self.gateway)
