"""Every hook a first-proxy plugin can implement. Each docstring is that hook's contract.

A hook implementation may return a value or an awaitable (write it as ``async def``);
the core awaits what it gets (``check_config`` alone must be synchronous). Implementations
take any subset of the arguments by name, so a hook can grow arguments without breaking
existing plugins.

Plugins run in pluggy's order: the most recently registered first, adjusted with
``@hookimpl(tryfirst=True)`` / ``@hookimpl(trylast=True)``. The defaults that ship in
``first_proxy.builtin`` are ``trylast``, so an installed plugin is asked first, with one
exception: the built-in API-key ``authenticate`` is ``tryfirst``, so a configured key is
recognized before any plugin sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import click
    from aiohttp import web

    from .config import GatewayConfig
    from .gateway import Gateway
    from .types import Call, Denial, Identity, Status, Target, UpstreamResponse

hookspec = pluggy.HookspecMarker("first_proxy")
hookimpl = pluggy.HookimplMarker("first_proxy")


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Declare the ``backend:`` names this plugin dispatches.

    Call ``register(name, validate=None)`` once per name. ``validate(target, path)``, if given,
    checks one :class:`~first_proxy.Target` at start-up and returns a list of
    ``(key_path, message)`` problems (empty when all is well). ``target.options`` holds the
    target's keys the core does not know; ``path`` is its key path in gateway.yaml. A target
    whose backend nobody registered is a configuration error, reported by ``first-proxy check``
    and at start-up.
    """


@hookspec
def check_config(config: GatewayConfig) -> list[tuple[str, str]] | None:
    """Report what is wrong in gateway.yaml for this plugin, as ``(key_path, message)`` pairs.

    Check what the plugin can see and depends on: its own ``plugins.<name>`` section (read
    ``config.plugins.get(name, {})``), the ``clusters`` settings it reads, anything else it
    needs. Return ``None`` or ``[]`` when all is well. Called by ``first-proxy check`` and at
    start-up, before any ``startup`` hook, so it must be synchronous and do no I/O. Every
    plugin is asked; all the problems of all plugins are reported together with the core's,
    and the gateway refuses to start while there are any.
    """


@hookspec
def startup(gateway: Gateway) -> Any:
    """Open what the plugin needs for the life of the gateway (clients, pollers, processes).

    Called once, after the store and the shared HTTP sessions are open and before the first
    request. Read your settings with ``gateway.plugin_config("your_plugin_name")``; they
    have passed ``check_config`` already.
    """


@hookspec
def shutdown(gateway: Gateway) -> Any:
    """Release what ``startup`` opened. Called once, in-flight requests already finished."""


@hookspec
def authenticate(request: web.Request, gateway: Gateway) -> Identity | None:
    """Say who sent ``request``.

    Return an :class:`~first_proxy.Identity`, or ``None`` when the credential is not one this
    plugin understands, so the next plugin is asked. Raise
    :class:`~first_proxy.errors.AuthenticationError` for a credential it owns but rejects
    (expired, revoked). Plugins are asked in order; the first ``Identity`` wins. The built-in
    API-key check comes first: a configured key never reaches a plugin. A request nobody
    identifies is answered 401.

    Never log the credential, and never copy it anywhere a backend could see it.
    """


@hookspec
def authorize(
    identity: Identity, model: str, target: Target | None, gateway: Gateway
) -> Denial | None:
    """Allow or refuse ``identity`` the use of ``model``, and of each of its targets.

    Called once with ``target=None`` for the model, then once per candidate target. Return
    ``None`` to allow, or a :class:`~first_proxy.Denial` with a reason the caller can act on.
    Every plugin is asked and any denial wins. Also called, with ``target=None``, to decide
    which models ``GET /v1/models`` lists. Keep it fast: it is on every request.
    """


@hookspec
def check_limits(identity: Identity, model: str, gateway: Gateway) -> Denial | None:
    """Refuse a call that would go over a limit: return a :class:`~first_proxy.Denial` with
    ``status=429`` and ``retry_after``, or ``None`` to let it through.

    Called once per inference request, after ``authorize`` allowed the model, and never for
    listings. Every plugin is asked and any denial wins. Keep it fast: no I/O that a request
    would wait on beyond what the limit itself needs.
    """


@hookspec
def select_target(
    model: str, candidates: Sequence[Target], statuses: Mapping[str, Status], gateway: Gateway
) -> Sequence[Target] | None:
    """Order the targets the caller may use for ``model``.

    ``statuses`` maps :attr:`Target.key` to the latest cached
    :class:`~first_proxy.Status` (a target never checked is missing). Return the candidates in
    the order to try them: the first is the choice, the rest the failover order. Leave out a
    target to rule it out. Return ``None`` to leave the choice to the next plugin. Never do I/O
    here: statuses are gathered in the background by ``report_status``.
    """


@hookspec
def dispatch(target: Target, call: Call, gateway: Gateway) -> UpstreamResponse | None:
    """Send ``call`` to ``target`` and return the upstream's answer.

    Answer only for the backends you registered, ``None`` otherwise. Send
    ``call.payload(target)`` as the body: it carries the upstream's model name. Use the target's
    own credential (``target.api_key``), never the caller's, and the shared session from
    ``gateway.session(target)``.

    Return an :class:`~first_proxy.UpstreamResponse` with ``body`` set, or with ``chunks``
    (an async iterator of bytes, SSE for ``call.stream``) and ``close``. Raise
    :class:`~first_proxy.errors.UpstreamError` when the target cannot be reached; that, a
    timeout, a 429 or a 5xx moves the call to the next target while nothing has reached the
    caller. The core applies the target's first-byte and total timeouts around this call.
    """


@hookspec
def report_status(target: Target, gateway: Gateway) -> Status | None:
    """Check the health and load of ``target``; ``None`` if it is not yours.

    Called in the background every ``status.interval`` seconds for every target, never on
    the request path; the answer is cached and handed to ``select_target``. Raising counts
    as unreachable, with the exception's text as ``last_error``.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``first-proxy`` command line, e.g. ``cli.command()(login)``."""


HOOK_NAMES: tuple[str, ...] = (
    "register_backends",
    "check_config",
    "startup",
    "shutdown",
    "authenticate",
    "authorize",
    "check_limits",
    "select_target",
    "dispatch",
    "report_status",
    "register_commands",
)

__all__ = ["HOOK_NAMES", "hookimpl", "hookspec"]

