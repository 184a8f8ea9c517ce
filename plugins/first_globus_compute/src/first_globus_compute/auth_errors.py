"""The error a caller gets while Globus Auth or Groups cannot answer."""

from __future__ import annotations

from first_proxy import ProxyError

__all__ = ["IdentityProviderUnavailable"]


class IdentityProviderUnavailable(ProxyError):
    """Globus could not check the caller's token or groups: 503, retry shortly."""

    status = 503
    type = "service_unavailable"
    code = "identity_provider_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})
