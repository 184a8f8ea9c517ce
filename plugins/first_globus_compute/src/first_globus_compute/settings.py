"""The Globus Compute half's settings: its ``plugins.first_globus_compute`` keys and what a
``globus_compute`` target must say, checked at start-up."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from first_proxy import GatewayConfig, Target

__all__ = ["BACKEND", "NAME", "ComputeTarget", "Settings", "check_settings", "validate_target"]

#: The plugin's name: its entry point and its section under ``plugins:``.
NAME = "first_globus_compute"
#: The ``backend:`` name of targets reached through Globus Compute.
BACKEND = "globus_compute"

TARGET_OPTIONS = {
    "endpoint": "the Globus Compute endpoint's UUID (required)",
    "function": "the UUID of the registered inference function (required)",
    "api_port": "the inference server's port on the compute node, e.g. 8000 (required)",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What the Compute half reads from ``plugins.first_globus_compute``."""

    #: The service account that owns the endpoints and functions (a confidential client).
    client_id: str | None = None
    client_secret: str | None = None
    #: This gateway instance's own public base URL, which streamed answers are posted to.
    callback_url: str | None = None

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Settings:
        url = section.get("callback_url")
        return cls(client_id=section.get("client_id"), client_secret=section.get("client_secret"),
                   callback_url=url.rstrip("/") if isinstance(url, str) and url else None)


@dataclass(frozen=True, slots=True)
class ComputeTarget:
    """A ``globus_compute`` target's own keys, read once."""

    endpoint: str
    function: str
    api_port: int

    @classmethod
    def of(cls, target: Target) -> ComputeTarget:
        options = target.options
        return cls(endpoint=str(options["endpoint"]), function=str(options["function"]),
                   api_port=int(options["api_port"]))


def validate_target(target: Target, path: str) -> list[tuple[str, str]]:
    """What is wrong with a ``globus_compute`` target, as ``(key_path, message)`` pairs."""
    problems = []
    options = target.options
    for key in ("endpoint", "function"):
        value = options.get(key)
        if value is None:
            problems.append((f"{path}.{key}", f"required for backend {BACKEND}: "
                                              f"{TARGET_OPTIONS[key]}"))
        elif not _is_uuid(value):
            problems.append((f"{path}.{key}", f"expected a UUID, got {value!r}"))
    port = options.get("api_port")
    if port is None:
        problems.append((f"{path}.api_port", f"required for backend {BACKEND}: "
                                             f"{TARGET_OPTIONS['api_port']}"))
    elif _port(port) is None:
        problems.append((f"{path}.api_port", f"expected a port number from 1 to 65535, got {port!r}"))
    for key in options:
        if key not in TARGET_OPTIONS:
            known = "; ".join(f"{k}: {v}" for k, v in TARGET_OPTIONS.items())
            problems.append((f"{path}.{key}", f"unknown key for backend {BACKEND} ({known})"))
    if target.url:
        problems.append((f"{path}.url", f"not used by backend {BACKEND}: the function reaches the "
                                        "inference server at 127.0.0.1:<api_port> on the compute "
                                        "node; remove url"))
    return problems


def check_settings(config: GatewayConfig) -> list[tuple[str, str]]:
    """Problems with ``plugins.first_globus_compute`` that the Compute half depends on."""
    if not any(t.backend == BACKEND for t in config.targets()):
        return []
    section = config.plugins.get(NAME, {})
    path = f"plugins.{NAME}"
    problems = []
    for key in ("client_id", "client_secret"):
        value = section.get(key)
        if not isinstance(value, str) or not value:
            problems.append((f"{path}.{key}", f"required for {BACKEND} targets: the service "
                             "account's client credentials, best as ${ENV_VAR}"))
    url = section.get("callback_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        problems.append((f"{path}.callback_url", "expected this gateway's public base URL, "
                         f"http(s)://..., got {url!r}"))
    return problems


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 65536 else None
