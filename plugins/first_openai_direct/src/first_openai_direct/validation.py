"""Start-up checks of an ``openai`` target's settings."""

from __future__ import annotations

from first_proxy import Target

OPTIONS = {
    "headers": "extra request headers for this upstream (a mapping of strings)",
    "status_url": "a status manifest: http(s):// URL or file:// path, instead of GET /models",
}


def validate_target(target: Target, path: str) -> list[tuple[str, str]]:
    problems = []
    if not target.url:
        problems.append((f"{path}.url", "required for backend openai: the API's base URL, "
                                        "e.g. https://api.example.org/v1"))
    for key, value in target.options.items():
        if key not in OPTIONS:
            known = "; ".join(f"{k}: {v}" for k, v in OPTIONS.items())
            problems.append((f"{path}.{key}", f"unknown key for backend openai ({known})"))
        elif key == "headers" and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            problems.append((f"{path}.headers", "expected a mapping of header names to strings"))
        elif key == "headers" and any(k.lower() == "authorization" for k in value):
            problems.append((f"{path}.headers", "set the upstream's key with api_key, "
                                                "not an Authorization header"))
        elif key == "status_url" and not (
            isinstance(value, str) and value.startswith(("http://", "https://", "file://"))
        ):
            problems.append((f"{path}.status_url", "expected an http(s):// or file:// URL"))
    return problems
