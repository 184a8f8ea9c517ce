"""API keys from gateway.yaml (``auth.api_keys``), sent as ``Authorization: Bearer <key>``.

Asked before any other plugin (``tryfirst``): a lookup in memory, so that a configured key
is recognised here and never reaches a plugin that would send it elsewhere to be checked.
"""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType

from ..config import ApiKey
from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Identity

_STATE = "first_proxy.api_keys"


def _keys(gateway: Gateway) -> dict[str, tuple[ApiKey, Identity]]:
    # Each key's identity is made once: an Identity is immutable, so every request shares it.
    keys = gateway.state[_STATE] = {key.sha256: (key, _identity(key))
                                    for key in gateway.config.auth.api_keys}
    return keys


def _identity(key: ApiKey) -> Identity:
    return Identity(user_id=f"key:{key.name}", username=key.name, groups=key.groups,
                    idp="api_key", extra=MappingProxyType({"auth": "api_key"}))


@hookimpl(tryfirst=True)
def authenticate(credential: str | None, gateway: Gateway) -> Identity | None:
    if credential is None:
        return None
    keys = gateway.state.get(_STATE) or _keys(gateway)
    # Header bytes that are not UTF-8 arrive as surrogates: hashed as sent, they match no key.
    digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()
    # Look up by digest, then confirm in constant time: nothing about the key leaks by timing.
    found = keys.get(digest)
    if found is None or not hmac.compare_digest(found[0].sha256, digest):
        return None
    return found[1]
