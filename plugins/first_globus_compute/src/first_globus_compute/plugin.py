"""The Compute half's hooks: a few lines each, handing over to :class:`GlobusComputeBackend`."""

from __future__ import annotations

from collections.abc import Callable

from first_proxy import Backend, GatewayConfig, hookimpl

from .backend import GlobusComputeBackend
from .executors import ClientFactory
from .settings import NAME, check_settings
from .streams import CALLBACK_ROUTE

__all__ = ["GlobusComputePlugin", "check_config", "register_backends", "register_routes"]


class GlobusComputePlugin:
    """The hooks of backend ``globus_compute``, as one plugin object.

    The installed plugin is one of these; tests register their own, with ``make_client``
    pointing the executors at a fake Globus Compute.
    """

    __name__ = NAME

    def __init__(self, make_client: ClientFactory | None = None) -> None:
        self.backend = GlobusComputeBackend(make_client)

    @hookimpl
    def register_backends(self, register: Callable[[Backend], None]) -> None:
        register(self.backend)

    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        # Authenticated by the stream's own secret, never by a caller's credential.
        register("POST", CALLBACK_ROUTE, self.backend.receive, auth=False)

    @hookimpl
    def check_config(self, config: GatewayConfig) -> list[tuple[str, str]]:
        return check_settings(config)


_installed = GlobusComputePlugin()
register_backends = _installed.register_backends
register_routes = _installed.register_routes
check_config = _installed.check_config
