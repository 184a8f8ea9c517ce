"""first-proxy: a federated, OpenAI-compatible inference gateway.

What a plugin imports lives here: ``hookimpl`` and the values hooks exchange.
"""

__version__ = "0.1.0"  # before the imports: the gateway names itself with it

from .backends import Backend
from .config import GatewayConfig
from .errors import AuthenticationError, ProxyError, UpstreamError
from .gateway import Gateway
from .hookspecs import hookimpl
from .keys import GATEWAY, IDENTITY
from .limits import Lease
from .surfaces import ANTHROPIC, OPENAI, Surface
from .types import Call, Denial, Identity, RequestRecord, Status, Target, Timeouts, UpstreamResponse
from .upstream import post_openai

__all__ = [
    "ANTHROPIC",
    "GATEWAY",
    "IDENTITY",
    "OPENAI",
    "AuthenticationError",
    "Backend",
    "Call",
    "Denial",
    "Gateway",
    "GatewayConfig",
    "Identity",
    "Lease",
    "ProxyError",
    "RequestRecord",
    "Status",
    "Surface",
    "Target",
    "Timeouts",
    "UpstreamError",
    "UpstreamResponse",
    "__version__",
    "hookimpl",
    "post_openai",
]
