"""The checks a request body must pass before it goes anywhere; everything else passes through."""

from __future__ import annotations

from typing import Any

import orjson

from .errors import BadRequest
from .jsonbody import MAX_DEPTH, duplicate_key, nesting

__all__ = ["ENDPOINTS", "parse_request"]

#: Inference endpoints and the field each one reads: whether it is required, its allowed JSON
#: types, and whether it may be an empty list. What OpenAI's own schema allows passes: a
#: completion's ``prompt`` may be null or ``[]``.
ENDPOINTS: dict[str, tuple[str, bool, tuple[type, ...], bool, str]] = {
    "chat/completions": ("messages", True, (list,), False, "a non-empty list of messages"),
    "completions": ("prompt", False, (str, list), True, "a string or a list"),
    "embeddings": ("input", True, (str, list), False, "a string or a non-empty list"),
}


def parse_request(raw: bytes, endpoint: str) -> dict[str, Any]:
    """The body as a dict, or a 400 saying what to fix. Unknown fields are left alone."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if not raw.strip():
            raise BadRequest("The request body is empty: send a JSON object with at least "
                             "'model'.", code="invalid_json") from None
        raise BadRequest(f"The request body is not valid JSON ({e}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    # Valid for orjson (1,024 levels), but deeper than the gateway can edit; counting the
    # brackets first keeps the depth's cost off every ordinary body.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and nesting(raw) > MAX_DEPTH:
        raise BadRequest(f"The request body is nested too deeply to forward; keep it to "
                         f"{MAX_DEPTH} levels or fewer.", code="invalid_json")
    twice = duplicate_key(raw, body)
    if twice is not None:
        raise BadRequest(f"The request body gives {twice!r} more than once; send each field once.",
                         code="duplicate_parameter", param=twice)
    model = body.get("model")
    if model is None:
        raise BadRequest("Missing required parameter 'model'. GET /v1/models lists the models.",
                         code="missing_required_parameter", param="model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(f"'model' must be a non-empty string, not {_json_type(model)}.",
                         code="invalid_type", param="model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"'stream' must be true or false, not {_json_type(stream)}.",
                         code="invalid_type", param="stream")
    field, required, types, empty_ok, expected = ENDPOINTS[endpoint]
    value = body.get(field)
    if value is None:
        if required:
            raise BadRequest(f"Missing required parameter {field!r}.",
                             code="missing_required_parameter", param=field)
    elif not isinstance(value, types) or (value == [] and not empty_ok):
        raise BadRequest(f"{field!r} must be {expected}, not {_json_type(value)}.",
                         code="invalid_type", param=field)
    if stream and endpoint == "embeddings":
        raise BadRequest("Embeddings cannot be streamed: leave out 'stream'.",
                         code="invalid_value", param="stream")
    return body


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
