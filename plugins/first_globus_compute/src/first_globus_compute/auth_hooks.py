"""The hooks of Globus Auth: callers identified by their Globus access tokens, and the site's
rules. Named after what they do (``specname`` says which hook each implements), so that the
package's other hooks can sit beside them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from first_proxy import Denial, Gateway, GatewayConfig, Identity, Target, hookimpl

from .auth_rules import AuthRules
from .auth_settings import read_auth_settings
from .globus_auth import GlobusAuth

__all__ = ["PLUGIN_NAME", "auth_lifespan"]

PLUGIN_NAME = "first_globus_compute"
_STATE = "first_globus_compute.auth"


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


@hookimpl(specname="lifespan")
def globus_auth_lifespan(gateway: Gateway) -> contextlib.AbstractAsyncContextManager[None]:
    return auth_lifespan(gateway)


@hookimpl(specname="authenticate")
async def authenticate_globus_token(credential: str | None, gateway: Gateway) -> Identity | None:
    running: _Running | None = gateway.state.get(_STATE)
    if running is None or credential is None:
        return None
    return await running.auth.identify(credential)


@hookimpl(specname="authorize")
def authorize_globus_identity(identity: Identity, model: str, target: Target | None,
                              gateway: Gateway) -> Denial | None:
    running: _Running | None = gateway.state.get(_STATE)
    return running.rules.check(identity, model, target) if running is not None else None
