"""first-proxy plugin for Globus: callers identified by their Globus access tokens, and models
on HPC clusters reached through Globus Compute.

Globus Auth introspects each caller's token (cached, off the event loop); the site's rules
(Globus groups, identity providers, authentication policies, groups per identity provider)
and the ``allowed_groups`` of models and targets decide who may call. Backend
``globus_compute`` runs each call as a task of a registered function that posts the request
to the inference server beside it; streamed answers are posted back to the gateway's callback
route while they are generated. ``first-globus-token`` is the users' login helper, and
``first-globus-compute register`` registers the functions.
"""

from __future__ import annotations

from .auth_hooks import (
    authenticate_globus_token,
    authorize_globus_identity,
    check_globus_auth_config,
    globus_auth_lifespan,
)
from .backend import run_function
from .plugin import check_config, register_backends, register_routes

__all__ = [
    "authenticate_globus_token",
    "authorize_globus_identity",
    "check_config",
    "check_globus_auth_config",
    "globus_auth_lifespan",
    "register_backends",
    "register_routes",
    "run_function",
]
