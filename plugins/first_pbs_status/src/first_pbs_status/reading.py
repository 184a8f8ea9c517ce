"""Finding a scheduler's JSON in what a command printed, and saying clearly when it is not there.

A command run over ``ssh`` may print a login banner before the JSON; a command killed or cut
off prints half of it. Both are told apart from a scheduler that printed nothing or something
else, and every failure is an :class:`OutputError` whose message says what was wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

__all__ = ["OutputError", "as_text", "mapping", "read_json"]

_OBJECT_START = re.compile(r"^\{", re.MULTILINE)
_DECODER = json.JSONDecoder()


class OutputError(ValueError):
    """What a scheduler command printed cannot be read; the message says why."""


def read_json(text: str, what: str, *,
              repair: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The first JSON object in ``text`` that begins a line; text around it is ignored.

    ``what`` names the command in messages. ``repair``, if given, is tried on the text when it
    does not parse as it is (for a scheduler known to print invalid JSON).
    """
    if not text.strip():
        raise OutputError(f"{what} printed nothing")
    if not _OBJECT_START.search(text):
        raise OutputError(f"{what} printed no JSON; it begins {_first_line(text)!r}")
    first_error: json.JSONDecodeError | None = None
    for candidate in (text, repair(text)) if repair is not None else (text,):
        for start in _OBJECT_START.finditer(candidate):
            try:
                value, _ = _DECODER.raw_decode(candidate, start.end() - 1)
            except json.JSONDecodeError as e:
                first_error = first_error or e
                continue
            if isinstance(value, dict):
                return value
    if first_error is None:
        raise OutputError(f"{what} printed JSON, but no object")
    if _cut_short(text, first_error):
        raise OutputError(f"{what}'s output ends in the middle of its JSON (after "
                          f"{len(text.encode())} bytes): was it cut off or killed?")
    raise OutputError(f"{what} printed JSON that is not valid: {first_error.msg} at line "
                      f"{first_error.lineno}, column {first_error.colno}")


def _cut_short(text: str, error: json.JSONDecodeError) -> bool:
    return error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0]
    return line if len(line) <= 80 else line[:80] + "..."


def mapping(value: Any, path: str) -> dict[str, Any]:
    """``value`` if it is a JSON object; otherwise an :class:`OutputError` naming ``path``."""
    if not isinstance(value, dict):
        raise OutputError(f"{path} is {_kind(value)}, expected an object")
    return value


def as_text(value: Any) -> str:
    """A JSON value as the text it stood for: ``""`` for null, ``"8"`` for ``8`` or ``8.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false"}.get(
        type(value), "a number")
