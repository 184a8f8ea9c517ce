"""first-proxy plugin for Globus: callers identified by their Globus access tokens.

Globus Auth introspects each caller's token (cached, off the event loop); the site's rules
(Globus groups, identity providers, authentication policies, groups per identity provider)
and the ``allowed_groups`` of models and targets decide who may call. ``first-globus-token``
is the users' login helper: it logs them in and prints a fresh access token.
"""

from __future__ import annotations

from .auth_hooks import (
    authenticate_globus_token,
    authorize_globus_identity,
    check_globus_auth_config,
    globus_auth_lifespan,
)

__all__ = [
    "authenticate_globus_token",
    "authorize_globus_identity",
    "check_globus_auth_config",
    "globus_auth_lifespan",
]
