"""gateway.yaml → typed configuration, with ``${VAR}`` from the environment and clear errors.

Every mistake is collected and reported at once as ``file: key.path: what was expected``.
:func:`load_config` and :func:`parse_config` raise on any; :func:`read_config` and
:func:`read_config_data` hand over what they could read, with the problems beside it, for the
checks that need plugins (``first-proxy check``, start-up) to add theirs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .types import Target, Timeouts

__all__ = [
    "ApiKey",
    "GatewayConfig",
    "ModelConfig",
    "load_config",
    "parse_config",
    "read_config",
    "read_config_data",
]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TARGET_KEYS = frozenset(
    {"name", "backend", "url", "api_key", "model", "cluster", "framework", "allowed_groups",
     "timeouts", "max_connections", "stream_usage", "weight"}
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Request bodies above this many bytes are refused with 413.
    max_body_bytes: int = 10 * 1024 * 1024
    #: Seconds in-flight requests get to finish when the gateway stops.
    shutdown_grace: float = 30.0
    #: Seconds a request body may take to arrive.
    body_timeout: float = 30.0
    #: Seconds a connection may stay idle, or with a request's headers half sent.
    idle_timeout: float = 60.0
    #: The ``Server`` header of every answer (aiohttp's own names its version).
    server_header: str = "first-proxy"
    #: Name the target that answered in an ``X-First-Target`` header.
    expose_target: bool = True
    #: One line per request on the ``first_proxy.access`` logger, at INFO.
    access_log: bool = True


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    groups: frozenset[str] = frozenset()
    requests_per_minute: float | None = None


@dataclass(frozen=True)
class AuthConfig:
    api_keys: tuple[ApiKey, ...] = ()


@dataclass(frozen=True)
class RequestLogConfig:
    #: Keep the request body (prompts) in the log; off unless the site opts in.
    include_prompts: bool = False
    flush_interval: float = 1.0
    batch_size: int = 500
    #: Rows kept in memory while the store is unreachable; older ones are dropped past this.
    max_buffer: int = 100_000


@dataclass(frozen=True)
class LimitsConfig:
    #: Default per-user request rate; ``None`` means unlimited.
    requests_per_minute: float | None = None


@dataclass(frozen=True)
class StatusConfig:
    interval: float = 30.0
    timeout: float = 10.0
    #: Failures in a row after which a target is cooled down (ranked last); 0: never.
    cooldown_failures: int = 3
    #: Seconds a target stays cooled down the first time; doubled after each retry that fails.
    cooldown_seconds: float = 30.0
    #: The longest cool-down, however many retries failed.
    cooldown_max_seconds: float = 600.0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    targets: tuple[Target, ...]
    allowed_groups: frozenset[str] = frozenset()
    description: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    source: str = "<defaults>"
    server: ServerConfig = ServerConfig()
    store: str = "sqlite:///first-proxy.db"
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    status: StatusConfig = StatusConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    disabled_plugins: frozenset[str] = frozenset()
    clusters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    #: What could not be read, as ``(key path, message)`` in file order; always empty in a
    #: configuration from :func:`load_config` or :func:`parse_config`. The gateway refuses
    #: to start while there are any.
    problems: tuple[tuple[str, str], ...] = ()
    #: Each key path of the file, numbered in file order; see :meth:`in_file_order`.
    key_order: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    def targets(self) -> list[Target]:
        return [t for m in self.models.values() for t in m.targets]

    def in_file_order(self, problems: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``problems`` sorted by where their key paths are in the file; a path the file does
        not have (a missing key) sorts with the closest key above it that it has."""
        return sorted(problems, key=lambda problem: self._position(problem[0]))

    def _position(self, path: str) -> int:
        while path not in self.key_order:
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return 0
            path = path[:cut]
        return self.key_order[path]


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and check a gateway.yaml; raise :class:`ConfigError` listing every problem."""
    return _valid(read_config(path, environ))


def parse_config(
    data: Any,
    *,
    source: str = "<dict>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> GatewayConfig:
    """Check an already-parsed configuration mapping (used by tests and ``load_config``)."""
    return _valid(read_config_data(data, source=source, environ=environ, base_dir=base_dir))


def _valid(config: GatewayConfig) -> GatewayConfig:
    if config.problems:
        raise ConfigError(config.source, list(config.problems))
    return config


def read_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a gateway.yaml as far as it goes: what it could read, with ``problems`` set.

    Raises :class:`ConfigError` only when there is nothing to read: the file cannot be read,
    is not YAML, or is not a mapping.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(source, [("", f"cannot read the file: {e.strerror or e}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [(where, f"not valid YAML: {problem}")]) from None
    return read_config_data(data, source=source, environ=environ, base_dir=Path(path).parent)


def read_config_data(
    data: Any,
    *,
    source: str = "<dict>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> GatewayConfig:
    """:func:`parse_config` that hands over what it could read, with ``problems`` set.

    Raises :class:`ConfigError` only when ``data`` is not a mapping.
    """
    r = _Reader(source, os.environ if environ is None else environ)
    data = r.interpolate(data if data is not None else {}, "")
    if not isinstance(data, dict):
        r.problem("", f"expected a mapping at the top of the file, got {_kind(data)}")
        r.raise_if_any()
    r.known(data, "", {"server", "store", "auth", "limits", "status", "request_log", "plugins",
                       "clusters", "models"})
    server = r.section(data, "server", ServerConfig, {
        "host": str, "port": int, "max_body_bytes": int, "shutdown_grace": float,
        "body_timeout": float, "idle_timeout": float, "server_header": str,
        "expose_target": bool, "access_log": bool})
    if not 0 <= server.port <= 65535:
        r.problem("server.port", f"expected a port number from 0 to 65535, got {server.port}")
    store = r.get(data, "store", str, "", GatewayConfig.store)
    store = _resolve_store(store, base_dir, r)
    limits = r.section(data, "limits", LimitsConfig, {"requests_per_minute": float})
    status = r.section(data, "status", StatusConfig, {
        "interval": float, "timeout": float, "cooldown_failures": int, "cooldown_seconds": float,
        "cooldown_max_seconds": float})
    request_log = r.section(data, "request_log", RequestLogConfig, {
        "include_prompts": bool, "flush_interval": float, "batch_size": int, "max_buffer": int})
    auth = _auth(r, r.mapping(data, "auth", "auth"))
    plugins, disabled = _plugins(r, r.mapping(data, "plugins", "plugins"))
    clusters = r.mapping(data, "clusters", "clusters")
    for name, value in clusters.items():
        if not isinstance(value, dict):
            r.problem(f"clusters.{name}", f"expected a mapping, got {_kind(value)}")
    models = _models(r, r.mapping(data, "models", "models"))
    config = GatewayConfig(
        source=source, server=server, store=store, auth=auth, limits=limits, status=status,
        request_log=request_log, plugins=plugins, disabled_plugins=disabled,
        clusters=clusters, models=models, key_order=_key_order(data),
    )
    return replace(config, problems=tuple(config.in_file_order(r.problems)))


def _key_order(data: Any) -> dict[str, int]:
    """Every key path in ``data``, numbered in the order the file has them."""
    order: dict[str, int] = {}

    def walk(value: Any, path: str) -> None:
        order.setdefault(path, len(order))
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, _join(path, str(key)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(data, "")
    return order


def _resolve_store(url: str, base_dir: Path | None, r: _Reader) -> str:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path != ":memory:" and not os.path.isabs(path) and base_dir is not None:
            path = str((base_dir / path).resolve())
        return "sqlite:///" + path
    if url.startswith(("postgresql://", "postgres://")):
        return url
    r.problem("store", f"expected sqlite:///PATH or postgresql://..., got {url!r}")
    return url


def _auth(r: _Reader, data: dict[str, Any]) -> AuthConfig:
    r.known(data, "auth", {"api_keys"})
    keys = []
    raw = data.get("api_keys") or []
    if not isinstance(raw, list):
        r.problem("auth.api_keys", f"expected a list, got {_kind(raw)}")
        raw = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        path = f"auth.api_keys[{i}]"
        if not isinstance(entry, dict):
            r.problem(path, f"expected a mapping with name and sha256 or key, got {_kind(entry)}")
            continue
        r.known(entry, path, {"name", "sha256", "key", "groups", "requests_per_minute"})
        name = r.get(entry, "name", str, path, None, required=True)
        if name in names:
            r.problem(f"{path}.name", f"duplicate key name {name!r}")
        names.add(name)
        digest = r.get(entry, "sha256", str, path, None)
        key = r.get(entry, "key", str, path, None)
        if (digest is None) == (key is None):
            r.problem(path, "give exactly one of sha256 (hex digest of the key) or key "
                            "(the key itself, best as ${ENV_VAR})")
            continue
        if key is not None:
            if len(key) < 8:
                r.problem(f"{path}.key", "keys must be at least 8 characters long")
            digest = hashlib.sha256(key.encode()).hexdigest()
        elif not _SHA256.match(digest.lower()):
            r.problem(f"{path}.sha256", "expected 64 hex characters (sha256 of the key)")
        keys.append(ApiKey(
            name=name or "", sha256=(digest or "").lower(),
            groups=r.groups(entry, path),
            requests_per_minute=r.get(entry, "requests_per_minute", float, path, None),
        ))
    return AuthConfig(api_keys=tuple(keys))


def _plugins(r: _Reader, data: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], frozenset[str]]:
    settings: dict[str, dict[str, Any]] = {}
    disabled = set()
    for name, value in data.items():
        path = f"plugins.{name}"
        if value is None:
            value = {}
        if not isinstance(value, dict):
            r.problem(path, f"expected a mapping of the plugin's settings, got {_kind(value)}")
            continue
        enabled = value.get("enabled", True)
        if not isinstance(enabled, bool):
            r.problem(f"{path}.enabled", f"expected true or false, got {_kind(enabled)}")
        elif not enabled:
            disabled.add(name)
        settings[name] = {k: v for k, v in value.items() if k != "enabled"}
    return settings, frozenset(disabled)


def _models(r: _Reader, data: dict[str, Any]) -> dict[str, ModelConfig]:
    models = {}
    for name, value in data.items():
        path = f"models.{name}"
        if not isinstance(value, dict):
            r.problem(path, f"expected a mapping with targets, got {_kind(value)}")
            continue
        r.known(value, path, {"targets", "allowed_groups", "description"})
        raw_targets = value.get("targets")
        if not isinstance(raw_targets, list) or not raw_targets:
            r.problem(f"{path}.targets", "expected a non-empty list of targets")
            continue
        targets = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_targets):
            target = _target(r, str(name), raw, f"{path}.targets[{i}]", i)
            if target is None:
                continue
            if target.name in seen:
                r.problem(f"{path}.targets[{i}].name", f"duplicate target name {target.name!r}")
            seen.add(target.name)
            targets.append(target)
        models[str(name)] = ModelConfig(
            name=str(name), targets=tuple(targets), allowed_groups=r.groups(value, path),
            description=r.get(value, "description", str, path, ""),
        )
    return models


def _target(r: _Reader, model: str, raw: Any, path: str, index: int) -> Target | None:
    if not isinstance(raw, dict):
        r.problem(path, f"expected a mapping with at least backend, got {_kind(raw)}")
        return None
    backend = r.get(raw, "backend", str, path, None, required=True)
    if backend is None:
        return None
    timeouts = r.mapping(raw, "timeouts", f"{path}.timeouts")
    r.known(timeouts, f"{path}.timeouts", {"connect", "first_byte", "total"})
    defaults = Timeouts()
    url = r.get(raw, "url", str, path, None)
    if url is not None and not url.startswith(("http://", "https://")):
        r.problem(f"{path}.url", f"expected an http:// or https:// URL, got {url!r}")
    return Target(
        name=r.get(raw, "name", str, path, f"{backend}-{index}"),
        model=model,
        backend=backend,
        upstream_model=r.get(raw, "model", str, path, model),
        url=url.rstrip("/") if url else None,
        api_key=r.get(raw, "api_key", str, path, None),
        cluster=r.get(raw, "cluster", str, path, "local"),
        framework=r.get(raw, "framework", str, path, backend),
        allowed_groups=r.groups(raw, path),
        timeouts=Timeouts(
            connect=r.get(timeouts, "connect", float, f"{path}.timeouts", defaults.connect),
            first_byte=r.get(timeouts, "first_byte", float, f"{path}.timeouts", defaults.first_byte),
            total=r.get(timeouts, "total", float, f"{path}.timeouts", defaults.total),
        ),
        max_connections=r.get(raw, "max_connections", int, path, 100),
        stream_usage=r.get(raw, "stream_usage", bool, path, True),
        weight=r.get(raw, "weight", float, path, 1.0),
        options={k: v for k, v in raw.items() if k not in _TARGET_KEYS},
    )


class _Reader:
    """Reads typed values out of plain mappings and collects every problem with its key path."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        path = path or "(top level)"
        # One problem per key: a second is about a value the first already refused (the
        # empty string a missing variable left, say).
        if all(path != known for known, _ in self.problems):
            self.problems.append((path, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.source, self.problems)

    def interpolate(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return self._expand(value, path)
        if isinstance(value, dict):
            return {k: self.interpolate(v, _join(path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def _expand(self, text: str, path: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self.problem(path, f"environment variable {name} is not set "
                               f"(set it, or write ${{{name}:-default}})")
            return ""
        return _ENV.sub(sub, text)

    def known(self, data: dict[str, Any], path: str, keys: set[str] | frozenset[str]) -> None:
        for key in data:
            if key not in keys:
                self.problem(_join(path, str(key)),
                             f"unknown key; expected one of: {', '.join(sorted(keys))}")

    def mapping(self, data: dict[str, Any], key: str, path: str) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {_kind(value)}")
            return {}
        return value

    def section(self, data: dict[str, Any], key: str, cls: type, fields: dict[str, type]) -> Any:
        values = self.mapping(data, key, key)
        self.known(values, key, set(fields))
        kwargs = {}
        for name, type_ in fields.items():
            if name in values:
                kwargs[name] = self.get(values, name, type_, key, None)
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def groups(self, data: dict[str, Any], path: str) -> frozenset[str]:
        value = data.get("allowed_groups", data.get("groups"))
        key = "allowed_groups" if "allowed_groups" in data else "groups"
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            self.problem(_join(path, key), f"expected a list of group names, got {_kind(value)}")
            return frozenset()
        return frozenset(value)

    def get(self, data: dict[str, Any], key: str, type_: type, path: str, default: Any,
            *, required: bool = False) -> Any:
        where = _join(path, key)
        if key not in data or data[key] is None:
            if required:
                self.problem(where, f"required; expected {_TYPE_NAMES[type_]}")
            return default
        value = data[key]
        converted = _convert(value, type_)
        if converted is _INVALID:
            self.problem(where, f"expected {_TYPE_NAMES[type_]}, got {_kind(value)} {value!r}")
            return default
        if type_ in (int, float) and converted < 0:
            self.problem(where, f"expected a number >= 0, got {value!r}")
            return default
        return converted


_INVALID = object()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _convert(value: Any, type_: type) -> Any:
    # Values that came through ${VAR} are strings; accept "8080" where a number is expected.
    if type_ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return _INVALID
    if type_ in (int, float):
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, (int, float)) and (type_ is float or isinstance(value, int)):
            return type_(value)
        if isinstance(value, str):
            try:
                return type_(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if type_ is str:
        return value if isinstance(value, str) else (str(value) if isinstance(value, int) and
                                                     not isinstance(value, bool) else _INVALID)
    return value if isinstance(value, type_) else _INVALID


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(type(value),
                                                                              type(value).__name__)
