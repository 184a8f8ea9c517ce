"""first-proxy: a federated, OpenAI-compatible inference gateway.

What a plugin imports lives here: ``hookimpl`` and the values hooks exchange.
"""

from .config import GatewayConfig
from .errors import AuthenticationError, ProxyError, UpstreamError
from .gateway import Gateway
from .hookspecs import hookimpl
from .types import Call, Denial, Identity, Status, Target, Timeouts, UpstreamResponse
from .upstream import post_openai

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Call",
    "Denial",
    "Gateway",
    "GatewayConfig",
    "Identity",
    "ProxyError",
    "Status",
    "Target",
    "Timeouts",
    "UpstreamError",
    "UpstreamResponse",
    "__version__",
    "hookimpl",
    "post_openai",
]
