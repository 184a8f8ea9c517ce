"""Every hook a first-proxy plugin can implement. Each docstring is that hook's contract.

A hook implementation may return a value or an awaitable (write it as ``async def``);
the core awaits what it gets (``check_config``, ``register_*`` and ``lifespan`` itself are
called synchronously). Implementations take any subset of the arguments by name, so a hook
can grow arguments without breaking existing plugins.

Plugins run in pluggy's order: the most recently registered first, adjusted with
``@hookimpl(tryfirst=True)`` / ``@hookimpl(trylast=True)``. The built-in defaults in
``first_proxy.builtin`` are ``trylast``, so an installed plugin is asked first, with two
exceptions that must come first: the API-key check (a local lookup, so that a key is never
sent to a plugin that calls out) and the built-in target order (which plugins then adjust).

How the answers of each hook combine is stated in its docstring under **Combines**. pluggy's
``hookwrapper`` / ``wrapper`` implementations are refused at start-up for the hooks the core
calls itself (every hook but ``register_commands``): say what you need with a plain
implementation and ``tryfirst`` / ``trylast``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    import click
    from aiohttp import web

    from .backends import Backend
    from .config import GatewayConfig
    from .gateway import Gateway
    from .limits import Lease
    from .types import Call, Denial, Identity, Status, Target

hookspec = pluggy.HookspecMarker("first_proxy")
hookimpl = pluggy.HookimplMarker("first_proxy")


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register the :class:`~first_proxy.Backend` objects this plugin provides.

    Call ``register(backend)`` once per backend. ``backend.name`` is what a target's
    ``backend:`` says; the core calls that object, and only it, to check
    (``validate``), open (``lifespan``), ask (``status``) and dispatch to (``dispatch``) its
    targets. A target whose backend nobody registered is a configuration error, and so are
    two plugins registering the same name (the error names both).

    **Combines:** every plugin is called.
    """


@hookspec
def register_routes(register: Callable[..., None]) -> None:
    """Add HTTP routes: ``register(method, path, handler, *, auth=True, errors=OPENAI,
    x_api_key=False)``.

    ``handler(request)`` is an aiohttp handler; ``request.app[first_proxy.GATEWAY]`` is the
    :class:`~first_proxy.Gateway`. With ``auth=True`` the core authenticates the
    caller first (401 otherwise) and the handler finds the :class:`~first_proxy.Identity` in
    ``request[first_proxy.IDENTITY]``; ``x_api_key=True`` lets the credential come as the
    ``x-api-key`` header too (Anthropic's clients send it). With ``auth=False`` the handler
    checks credentials of its own (a callback's per-task secret, say). Every answer carries
    the core's request id, is counted in its metrics, and any
    :class:`~first_proxy.errors.ProxyError` the handler raises becomes an error in the route's
    shape (``errors``: :data:`first_proxy.OPENAI` or :data:`first_proxy.ANTHROPIC`). A path the
    core serves itself cannot be taken, whatever the method.

    **Combines:** every plugin is called, at start-up.
    """


@hookspec
def register_migrations(register: Callable[[str, Sequence[str]], None]) -> None:
    """Add tables of your own to the store: ``register(name, migrations)``.

    ``migrations`` are SQL scripts, each bringing your tables from version ``i`` to
    ``i + 1``, kept per ``name`` (your plugin's name); append to the list, never edit an
    entry. Write SQL both SQLite and PostgreSQL run (``{real}`` and ``{autoid}`` are
    filled in per database). Use the tables through ``gateway.store.execute`` and
    ``gateway.store.fetch``, with ``?`` placeholders.

    **Combines:** every plugin is called, before ``lifespan``.
    """


@hookspec
def check_config(config: GatewayConfig) -> list[tuple[str, str]] | None:
    """Report what is wrong in gateway.yaml for this plugin, as ``(key_path, message)`` pairs.

    Check what the plugin can see and depends on: its own ``plugins.<name>`` section (read
    ``config.plugins.get(name, {})``), the ``clusters`` settings it reads, anything else it
    needs. Return ``None`` or ``[]`` when all is well. Called by ``first-proxy check`` and at
    start-up, before any ``lifespan``, so it must be synchronous and do no I/O. It is asked
    even when the core found problems elsewhere in the file: ``config`` then holds what could
    be read.

    **Combines:** every plugin's problems are reported together with the core's, and the
    gateway refuses to start while there are any.
    """


@hookspec
def lifespan(gateway: Gateway) -> AbstractAsyncContextManager[Any] | None:
    """Return an async context manager that holds what the plugin opens for the life of the
    gateway (clients, pollers, child processes), or ``None``.

    It is entered once, after the store and the shared HTTP sessions are open and before the
    first request, and left at shutdown once the requests in flight are done. Read your
    settings with ``gateway.plugin_config("your_plugin_name")``; they passed ``check_config``.

    **Combines:** every plugin's is entered in order (backends' ``lifespan`` after the
    plugins'), and they are left in reverse. If one fails to enter, those already entered are
    left and the gateway stops with that error; a failure while leaving one is logged and the
    others are still left.
    """


@hookspec
def authenticate(request: web.Request, credential: str | None,
                 gateway: Gateway) -> Identity | None:
    """Say who sent ``request``.

    ``credential`` is the token the route reads: ``Authorization: Bearer <token>`` (and
    ``x-api-key`` on routes that take it, the Anthropic API's), or ``None``. Return an
    :class:`~first_proxy.Identity`, or ``None`` when the credential is not one this plugin
    understands, so the next plugin is asked. Raise
    :class:`~first_proxy.errors.AuthenticationError` for a credential it owns but rejects
    (expired, revoked), or another ``ProxyError`` (a 503 when an identity service is down).
    A request nobody identifies is answered 401.

    Never log the credential, and never copy it anywhere a backend could see it.

    **Combines:** plugins are asked in order; the first ``Identity`` wins.
    """


@hookspec
def authorize(
    identity: Identity, model: str, target: Target | None, gateway: Gateway
) -> Denial | None:
    """Allow or refuse ``identity`` the use of ``model``, and of each of its targets.

    Called once with ``target=None`` for the model, then once per candidate target. Return
    ``None`` to allow, or a :class:`~first_proxy.Denial` with a reason the caller can act on.
    Also called, with ``target=None``, to decide which models ``GET /v1/models`` lists. Keep
    it fast: it is on every request.

    **Combines:** every plugin is asked; any denial wins.
    """


@hookspec
def check_limits(identity: Identity, model: str, call: Call,
                 gateway: Gateway) -> Denial | Lease | None:
    """Admit ``call`` under a limit, or refuse it.

    Asked once per inference call, once it is known to be routable: the model exists, the
    caller may use it, and a target is left. Return ``None`` when no limit of yours applies,
    a :class:`~first_proxy.Denial` (``status=429`` and ``retry_after``) to refuse, or a
    :class:`~first_proxy.Lease` for what the call holds while it runs: the core calls its
    ``settle(usage)`` when the call ends with the usage the upstream reported (tokens from the
    answer or the stream's usage chunk; ``{}`` when none was reported), or its ``release()``
    when the call fails, is cancelled or the gateway shuts down. Exactly one of the two is
    called, once. Keep it fast: no I/O that a request would wait on beyond what the limit
    needs.

    **Combines:** plugins are asked in order; the first denial stops the others and the leases
    already taken are released.
    """


@hookspec
def select_target(
    model: str, candidates: Sequence[Target], statuses: Mapping[str, Status], gateway: Gateway
) -> Sequence[Target] | None:
    """Adjust the order in which ``model``'s targets are tried.

    ``candidates`` is the order so far: the built-in order (the best live target first; see
    ``first_proxy.builtin.selection``) as earlier plugins adjusted it. ``statuses`` maps
    :attr:`Target.key` to the target's latest :class:`~first_proxy.Status` (its own and its
    cluster's together; a target never checked is missing). Return the candidates in the order
    to try them (the first is the choice, the rest the failover order; leave one out to rule
    it out), or ``None`` to keep the order as it is. Never do I/O on every call; a plugin that
    must (a cold start submitting a job) does it only when no target can serve.

    It may raise a :class:`~first_proxy.errors.ProxyError` to refuse with its own answer (a 503
    with ``Retry-After`` saying where the model is starting, say): the caller gets it as it is,
    and the later plugins are not asked.

    **Combines:** a chain: each plugin receives the order the previous one returned.
    """


@hookspec
def report_status(cluster: str, settings: Mapping[str, Any], targets: Sequence[Target],
                  gateway: Gateway) -> Status | None:
    """Report the state of ``cluster``, a name under gateway.yaml's ``clusters:``, whose
    entry is ``settings``; ``None`` if it is not yours (e.g. its ``status:`` names another
    scheduler).

    Called in the background once per cluster every ``status.interval`` seconds, never on the
    request path. The :class:`~first_proxy.Status` applies to every target in ``targets``
    (those with that ``cluster:``): ``models`` maps a model name to its state there
    (``running``, ``starting``, ``queued``, ``held``, ``failed``, ``stopped``); a model it
    does not list is taken as ``stopped`` there. ``detail["models"][name]`` may add facts:
    ``jobs``, ``since``, ``nodes``, ``queue_position``, ``expected_start``, ``reason`` (see
    :mod:`first_proxy.status`); the built-in selection puts the shortest wait first by them.
    Raising counts as the cluster's state being unknown, with the exception's text as
    ``last_error``. A plugin that learns of a change sooner calls
    ``gateway.push_status(cluster, status)``.

    A target's own health (is its server up, how loaded) comes from its backend's ``status``.

    **Combines:** the first answer that is not ``None``.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``first-proxy`` command line, e.g. ``cli.command()(login)``.

    **Combines:** every plugin is called.
    """


HOOK_NAMES: tuple[str, ...] = (
    "register_backends",
    "register_routes",
    "register_migrations",
    "check_config",
    "lifespan",
    "authenticate",
    "authorize",
    "check_limits",
    "select_target",
    "report_status",
    "register_commands",
)

__all__ = ["HOOK_NAMES", "hookimpl", "hookspec"]
