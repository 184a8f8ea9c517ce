"""Backends: the kinds of target (``backend:`` in gateway.yaml) and the objects that serve them.

A plugin registers one :class:`Backend` object per kind through ``register_backends``; the
core looks each target's backend up by name and calls that object, and only it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .gateway import Gateway
    from .types import Call, Status, Target, UpstreamResponse

__all__ = ["Backend", "Registered", "registered_backends"]


class Backend:
    """A kind of target. Subclass it, set :attr:`name`, and implement :meth:`dispatch`."""

    #: What a target's ``backend:`` says to be served by this object.
    name: str = ""

    def validate(self, target: Target, path: str) -> list[tuple[str, str]]:
        """What is wrong with ``target`` (at key path ``path``), as ``(key_path, message)``
        pairs; ``target.options`` holds its keys the core does not know. Called at start-up
        and by ``first-proxy check``; synchronous, no I/O."""
        return []

    async def dispatch(self, target: Target, call: Call, gateway: Gateway) -> UpstreamResponse:
        """Send ``call`` to ``target`` and return the upstream's answer.

        Send ``call.payload(target)`` as the body (it carries the upstream's model name), with
        the target's own credential, never the caller's; reuse ``gateway.session(target)``.
        Return an :class:`~first_proxy.UpstreamResponse` with ``body``, or with ``chunks`` (an
        async iterator of bytes, SSE for ``call.stream``) and ``close``. Raise
        :class:`~first_proxy.UpstreamError` when the target cannot be reached: that, a timeout,
        a 401, 403, 429 or 5xx, or a success that is not a JSON object, moves the call to the
        next target while nothing has reached the caller. The core holds the call to the
        target's first-byte and total timeouts.
        """
        raise NotImplementedError(f"backend {self.name!r} does not dispatch")

    async def status(self, target: Target, gateway: Gateway) -> Status | None:
        """The health and load of ``target``, or ``None`` if this backend cannot tell.

        Called in the background every ``status.interval`` seconds, never on the request
        path; raising counts as unreachable, with the exception's text as ``last_error``.
        """
        return None

    def lifespan(self, gateway: Gateway) -> AbstractAsyncContextManager[Any] | None:
        """An async context manager holding what the backend opens for the life of the
        gateway (executors, child processes), or ``None``; entered after the plugins' own."""
        return None


@dataclass(frozen=True, slots=True)
class Registered:
    backend: Backend
    #: The plugin that registered it.
    plugin: str


def registered_backends(
    pm: pluggy.PluginManager, skip: frozenset[str] = frozenset(),
) -> tuple[dict[str, Registered], list[tuple[str, str]]]:
    """Backend name → its object and owner, from every ``register_backends`` (but the plugins
    in ``skip``), and the problems found: a name registered twice, or not a :class:`Backend`."""
    found: dict[str, Registered] = {}
    problems: list[tuple[str, str]] = []
    for impl in pm.hook.register_backends.get_hookimpls():
        if impl.plugin_name in skip:
            continue

        def register(backend: Backend, _plugin: str = impl.plugin_name) -> None:
            if not isinstance(backend, Backend) or not backend.name:
                problems.append((f"plugins.{_plugin}", f"register_backends registered "
                                 f"{backend!r}, which is not a first_proxy.Backend with a name"))
                return
            earlier = found.get(backend.name)
            if earlier is not None:
                problems.append((f"plugins.{_plugin}", f"backend {backend.name!r} is registered "
                                 f"by both {earlier.plugin} and {_plugin}; uninstall or disable "
                                 "one of them"))
                return
            found[backend.name] = Registered(backend, _plugin)

        try:
            impl.function(**{name: register for name in impl.argnames})
        except TypeError as e:  # most likely the register(name, validate=...) of old
            problems.append((f"plugins.{impl.plugin_name}", f"register_backends failed ({e}); "
                             "register takes one first_proxy.Backend object"))
    return found, problems

