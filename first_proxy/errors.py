"""Errors that become OpenAI-shaped responses: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import orjson

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ConfigError",
    "ExpectationFailed",
    "NoTargetAvailable",
    "NotFound",
    "PermissionDenied",
    "PluginError",
    "ProxyError",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "StartupError",
    "UpstreamError",
    "UpstreamTimeout",
    "error_body",
    "internal_error",
    "one_line",
]


def error_body(message: str, type_: str, code: str | int | None, param: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI error object."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class ProxyError(Exception):
    """An error the caller should see, with its HTTP status and OpenAI ``type``/``code``."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"
    #: Close the connection after answering (the rest of the request cannot be read).
    close_connection = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class MethodNotAllowed(BadRequest):
    status = 405
    code = "method_not_allowed"


class ExpectationFailed(BadRequest):
    status = 417
    code = "expectation_failed"


class RequestTimeout(BadRequest):
    status = 408
    code = "request_timeout"


class RequestTooLarge(BadRequest):
    status = 413
    code = "request_too_large"


class AuthenticationError(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(ProxyError):
    """A target could not be reached or failed; the core fails over to the next one."""

    status = 502
    type = "api_error"
    code = "upstream_error"


class NoTargetAvailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "no_target_available"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


def internal_error(request_id: str) -> ProxyError:
    """The 500 for a failure of the gateway itself: no details, a request id to quote."""
    return ProxyError(f"The gateway failed on this request; quote request id {request_id} to "
                      "your administrator.")


class PluginError(Exception):
    """A plugin broke the hooks' contract; the gateway refuses to start, saying how."""


class ConfigError(Exception):
    """gateway.yaml is wrong; ``problems`` lists ``(key_path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class StartupError(Exception):
    """The gateway cannot start (the store, a plugin, the address); the message says why and
    what to do, in one line. The exception that caused it is its ``__cause__``."""


def one_line(error: BaseException) -> str:
    """``error`` as ``Type: first line of its message``, for one-line reports."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
