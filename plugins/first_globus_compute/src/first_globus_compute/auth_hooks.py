"""The hooks of Globus Auth: callers identified by their Globus access tokens, and the site's
rules. Named after what they do (``specname`` says which hook each implements), so that the
package's other hooks can sit beside them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from first_proxy import Denial, Gateway, GatewayConfig, Identity, Target, hookimpl
from first_proxy.builtin.api_keys import bearer_token

from .auth_rules import AuthRules
from .auth_settings import read_auth_settings
from .globus_auth import GlobusAuth

__all__ = ["PLUGIN_NAME", "auth_lifespan"]

PLUGIN_NAME = "first_globus_compute"
_STATE = "first_globus_compute.auth"
_STACK = "first_globus_compute.auth_stack"


@dataclass(frozen=True)
class _Running:
    auth: GlobusAuth
    rules: AuthRules


@contextlib.asynccontextmanager
async def auth_lifespan(gateway: Gateway) -> AsyncIterator[None]:
    """Globus Auth for the life of ``gateway``, when its settings name a client."""
    settings, _ = read_auth_settings(gateway.plugin_config(PLUGIN_NAME), f"plugins.{PLUGIN_NAME}")
    if settings is None:
        yield
        return
    rules = AuthRules(settings, gateway.config)
    async with GlobusAuth(settings, needs_groups=rules.needs_groups) as auth:
        gateway.state[_STATE] = _Running(auth, rules)
        try:
            yield
        finally:
            del gateway.state[_STATE]


@hookimpl(specname="check_config")
def check_globus_auth_config(config: GatewayConfig) -> list[tuple[str, str]]:
    return read_auth_settings(config.plugins.get(PLUGIN_NAME, {}), f"plugins.{PLUGIN_NAME}")[1]


@hookimpl(specname="startup")
async def start_globus_auth(gateway: Gateway) -> None:
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(auth_lifespan(gateway))
    gateway.state[_STACK] = stack


@hookimpl(specname="shutdown")
async def stop_globus_auth(gateway: Gateway) -> None:
    stack = gateway.state.pop(_STACK, None)
    if stack is not None:
        await stack.aclose()


@hookimpl(specname="authenticate")
async def authenticate_globus_token(request: web.Request, gateway: Gateway) -> Identity | None:
    running: _Running | None = gateway.state.get(_STATE)
    if running is None:
        return None
    token = bearer_token(request)
    if token is None:
        return None
    return await running.auth.identify(token)


@hookimpl(specname="authorize")
def authorize_globus_identity(identity: Identity, model: str, target: Target | None,
                              gateway: Gateway) -> Denial | None:
    running: _Running | None = gateway.state.get(_STATE)
    return running.rules.check(identity, model, target) if running is not None else None
