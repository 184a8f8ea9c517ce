"""How a target failed, for failover and for the caller: kinds, messages, relayed errors.

Every message here may reach a caller, so each passes through :meth:`Target.redact` and none
carries a library's own text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from .errors import ProxyError, RateLimited, UpstreamError, UpstreamTimeout, error_body
from .types import Call, Target, UpstreamResponse

__all__ = ["Failure", "as_openai_error", "exhausted", "failure_of", "looks_like_object",
           "retry_failure"]


@dataclass(slots=True)
class Failure:
    """One failed attempt at a target."""

    target: Target
    #: ``connect``, ``timeout``, ``busy``, ``credential``, ``status``, ``invalid`` or ``empty``:
    #: the ``kind`` label of the upstream-error metric.
    kind: str
    message: str


def retry_failure(target: Target, upstream: UpstreamResponse) -> Failure:
    status = upstream.status
    if status == 429:
        return Failure(target, "busy", f"HTTP 429: {target.redact(_upstream_error(upstream.body)[0])}")
    if status in (401, 403):
        return Failure(target, "credential", f"HTTP {status}: the target refused the gateway's "
                                              "credential")
    if status < 400:
        return Failure(target, "invalid", f"HTTP {status} with an answer that is not a JSON "
                                           "object")
    return Failure(target, "status",
                    f"HTTP {status}: {target.redact(_upstream_error(upstream.body)[0])}")


def looks_like_object(body: bytes | None) -> bool:
    """Whether a successful answer is a JSON object: an HTML page from a proxy in front of the
    upstream, a bare string or a cut-off body is the target failing. Only its ends are looked
    at: an embeddings answer can be megabytes, and the caller's client parses it anyway."""
    body = body or b""
    return body[:64].lstrip().startswith(b"{") and body[-64:].rstrip().endswith(b"}")


def failure_of(target: Target, error: BaseException) -> Failure:
    if isinstance(error, TimeoutError):
        return Failure(target, "timeout", "no answer in time")
    if isinstance(error, StopAsyncIteration):
        return Failure(target, "empty", "the stream ended before its first event")
    message = error.message if isinstance(error, ProxyError) else (str(error) or type(error).__name__)
    return Failure(target, "connect", target.redact(message))


def exhausted(model: str, failures: list[Failure]) -> ProxyError:
    """The error for a call every target failed: 504 if all timed out, 429 if all were busy,
    else 502; each attempt is named in the message."""
    summary = "; ".join(f"{f.target.name}: {f.message}" for f in failures)
    kinds = {f.kind for f in failures}
    if kinds == {"timeout"}:
        return UpstreamTimeout(
            f"Every target for {model!r} timed out ({summary}). Try again later, or ask for "
            "fewer tokens.")
    if kinds == {"busy"}:
        return RateLimited(f"Every target for {model!r} is busy ({summary}). Retry shortly.",
                           code="upstream_busy", headers={"Retry-After": "5"})
    return UpstreamError(
        f"No target for {model!r} could answer ({summary}). Try again later; if this persists, "
        "tell your gateway administrator.")


#: OpenAI's error types by status; an upstream's own type is kept only if it is one of them.
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
                 413: "invalid_request_error", 422: "invalid_request_error",
                 429: "rate_limit_error"}
_OPENAI_TYPES = frozenset({*_STATUS_TYPES.values(), "api_error", "server_error",
                           "timeout_error"})
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _upstream_error(body: bytes | None) -> tuple[str, object, object]:
    """An upstream error body's message, type and code, from OpenAI's shape or vLLM's (which
    puts them on top), or the start of the body when it is neither."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        found = inner if isinstance(inner, dict) else data
        for key in ("message", "detail", "error"):
            if isinstance(found.get(key), str):
                return found[key][:300], found.get("type"), found.get("code")
        return "no details", found.get("type"), found.get("code")
    text = (body or b"")[:300].decode("utf-8", "replace").strip()
    return text or "no details", None, None


def as_openai_error(upstream: UpstreamResponse, call: Call, target: Target) -> bytes:
    """An upstream's error in OpenAI's shape: an OpenAI type, a string code (or null), and the
    gateway's model name where the upstream named its own."""
    message, type_, code = _upstream_error(upstream.body)
    if target.upstream_model != call.model:
        message = message.replace(target.upstream_model, call.model)
    type_ = _STATUS_TYPES.get(upstream.status) or (
        type_ if type_ in _OPENAI_TYPES else "api_error")
    if not (isinstance(code, str) and _CODE.fullmatch(code)):
        code = None
    return error_body(target.redact(message), str(type_), code)
