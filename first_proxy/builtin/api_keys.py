"""API keys from gateway.yaml (``auth.api_keys``), sent as ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType

from aiohttp import web

from ..config import ApiKey
from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Identity

_STATE = "first_proxy.api_keys"


@hookimpl(trylast=True)
def startup(gateway: Gateway) -> None:
    # Each key's identity is made once: an Identity is immutable, so every request shares it.
    gateway.state[_STATE] = {key.sha256: (key, _identity(key)) for key in gateway.config.auth.api_keys}


def _identity(key: ApiKey) -> Identity:
    extra: dict[str, object] = {"auth": "api_key"}
    if key.requests_per_minute is not None:
        extra["requests_per_minute"] = key.requests_per_minute
    return Identity(user_id=f"key:{key.name}", username=key.name, groups=key.groups,
                    idp="api_key", extra=MappingProxyType(extra))


# First of all: a configured key is answered here and never reaches another plugin (so it is
# never sent to an outside identity provider); anything else is left to them.
@hookimpl(tryfirst=True)
def authenticate(request: web.Request, gateway: Gateway) -> Identity | None:
    token = bearer_token(request)
    if token is None:
        return None
    keys: dict[str, tuple[ApiKey, Identity]] = gateway.state.get(_STATE, {})
    digest = hashlib.sha256(token.encode()).hexdigest()
    # Look up by digest, then confirm in constant time: nothing about the key leaks by timing.
    found = keys.get(digest)
    if found is None or not hmac.compare_digest(found[0].sha256, digest):
        return None
    return found[1]


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
