"""The values the core and its plugins hand each other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import hdrs

from .jsonbody import members, set_member

__all__ = [
    "Call",
    "Denial",
    "Identity",
    "RequestRecord",
    "Status",
    "Target",
    "Timeouts",
    "UpstreamResponse",
]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the answer of an ``authenticate`` hook."""

    user_id: str
    username: str = ""
    groups: frozenset[str] = frozenset()
    idp: str = ""
    #: Facts a plugin wants to keep about the session (token expiry, policies met, ...).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.username or self.user_id


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a call is refused: the answer of an ``authorize`` hook that says no."""

    reason: str
    status: int = 403
    code: str = "permission_denied"
    #: Seconds after which retrying may succeed (sent as ``Retry-After`` with 429).
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to reach a target, to get its first byte, and for the whole call."""

    connect: float = 10.0
    first_byte: float = 120.0
    total: float = 900.0


@dataclass(frozen=True, slots=True)
class Target:
    """One place a model runs: a row of ``models.<name>.targets`` in gateway.yaml."""

    name: str
    model: str
    backend: str
    #: The model name the upstream knows (``model:`` in gateway.yaml; defaults to ``model``).
    upstream_model: str
    url: str | None = None
    api_key: str | None = None
    cluster: str = "local"
    framework: str = ""
    allowed_groups: frozenset[str] = frozenset()
    timeouts: Timeouts = Timeouts()
    max_connections: int = 100
    #: Ask streaming upstreams for a final usage chunk (hidden from callers who did not ask).
    stream_usage: bool = True
    #: Among targets equally good for a call, the higher weight goes first.
    weight: float = 1.0
    #: Backend-specific settings: every key of the target the core does not know.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: A name unique across the gateway: ``model/target``.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Made once: the request path looks targets up by key.
        object.__setattr__(self, "key", f"{self.model}/{self.name}")

    def redact(self, text: str) -> str:
        """``text`` without this target's key, URL or host, fit to show callers."""
        host = urlsplit(self.url).hostname if self.url else None
        for secret, shown in ((self.api_key, "<api_key>"), (self.url, "<url>"), (host, "<host>")):
            if secret:
                text = text.replace(secret, shown)
        return text


@dataclass(slots=True)
class Status:
    """What ``report_status`` says of a target; ``None`` fields are unknown."""

    reachable: bool
    #: Models served there and their state: ``running``, ``queued``, ``starting``, ``stopped``.
    models: Mapping[str, str] = field(default_factory=dict)
    queue_depth: float | None = None
    running_requests: float | None = None
    kv_cache_usage: float | None = None
    last_error: str | None = None
    checked_at: float = 0.0
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "models": dict(self.models),
            "queue_depth": self.queue_depth,
            "running_requests": self.running_requests,
            "kv_cache_usage": self.kv_cache_usage,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
            **({"detail": dict(self.detail)} if self.detail else {}),
        }


@dataclass(slots=True)
class Call:
    """One inference request on its way to a target.

    ``body`` is the caller's JSON, parsed once; ``raw`` the bytes it came as.
    """

    endpoint: str
    model: str
    body: dict[str, Any]
    raw: bytes
    stream: bool
    identity: Identity
    request_id: str
    #: True when the core asked the upstream for a usage chunk the caller did not ask for.
    usage_injected: bool = False

    def payload(self, target: Target) -> bytes:
        """The request body for ``target``: its model name, and a usage request when streaming.

        Only those values change; every other byte is the caller's (see
        :mod:`first_proxy.jsonbody`). The caller's bytes go out untouched when nothing needs
        to change.
        """
        rename = target.upstream_model != self.model
        options = self.body.get("stream_options")
        # A ``stream_options`` that is not an object is the caller's to get wrong: it is
        # passed on as it is, for the upstream to judge, and no usage is asked for.
        inject = (self.stream and target.stream_usage and self.endpoint in _USAGE_ENDPOINTS
                  and (options is None or isinstance(options, dict))
                  and not (options and options.get("include_usage") is True))
        self.usage_injected = inject
        if not rename and not inject:
            return self.raw
        if inject and "stream_options" not in self.body and not rename:
            # The common case needs no walk: add the member before the closing brace.
            end = self.raw.rindex(b"}")
            return self.raw[:end] + b', "stream_options": {"include_usage": true}' + self.raw[end:]
        text = self.raw.decode()
        if rename:
            text = set_member(text, "model", orjson.dumps(target.upstream_model).decode())
        if inject and isinstance(options, dict):
            start = next(start for key, start, _ in members(text)[0] if key == "stream_options")
            text = set_member(text, "include_usage", "true", at=start)
        elif inject:
            text = set_member(text, "stream_options", '{"include_usage": true}')
        return text.encode()


_USAGE_ENDPOINTS = frozenset({"chat/completions", "completions"})


@dataclass(slots=True)
class RequestRecord:
    """What the log keeps of one request. Never the caller's credential."""

    ts: float
    request_id: str
    endpoint: str
    user: str | None = None
    model: str | None = None
    target: str | None = None
    status: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool = False
    attempts: int = 0
    error: str | None = None
    #: The request body, only when ``request_log.include_prompts`` is on.
    prompt: str | None = None
    #: Fields plugins add to the row (a batch id, an identity provider); kept as JSON.
    extra: dict[str, Any] | None = None
    #: ``time.perf_counter()`` when the request arrived; not stored.
    started: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """What the store keeps of the record: every field but its start time."""
        found = asdict(self)
        del found["started"]
        return found


@dataclass(slots=True)
class UpstreamResponse:
    """What ``dispatch`` returns: a status, headers and either a body or a stream of bytes.

    ``close`` releases the upstream connection; the core always calls it, and calls it early
    when the caller goes away, which is how an upstream learns to stop generating.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    close: Callable[[], Awaitable[None] | None] | None = None
    #: With ``chunks``, optionally: True once ``chunks`` has nothing more to give, known
    #: without waiting (aiohttp's ``response.content.at_eof``). The core then sends the last
    #: chunk together with the end of its answer, one write fewer per stream.
    at_eof: Callable[[], bool] | None = None

    @property
    def content_type(self) -> str:
        """The answer's Content-Type ("" if none): ``headers`` may be aiohttp's, which ignore
        case, or a plain dict a plugin made."""
        headers = self.headers
        found = headers.get(hdrs.CONTENT_TYPE)
        return found if found is not None else headers.get("content-type", "")

    async def aclose(self) -> None:
        if self.close is not None:
            result = self.close()
            self.close = None
            if result is not None:
                await result
