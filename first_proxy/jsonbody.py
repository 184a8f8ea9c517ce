"""A request body as the caller wrote it: checked for duplicate keys, and edited in place.

The gateway parses a body once (orjson) to read what routing needs, but it never forwards
that parse: an upstream gets the caller's bytes, with at most a few top-level values
replaced. Every other value reaches it as written: integers beyond 64 bits, the spelling of
floats, key order, nesting of any depth.

Finding where a value starts and ends needs a walk over the text, which costs a few
microseconds; it is done only when a body has to change or may hold a duplicated key. The
walk recurses into nested values, so a body must nest no deeper than :data:`MAX_DEPTH`
(:func:`nesting` says how deep one does): then it can be walked from wherever it is called.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from itertools import accumulate
from json.decoder import scanstring
from typing import Any

__all__ = ["MAX_DEPTH", "duplicate_key", "members", "nesting", "set_member"]

#: The deepest nesting a body may have: far below Python's recursion limit (1,000 frames, the
#: walk's own included), and above orjson's 254, which the walk exists to get past.
MAX_DEPTH = 512

_WS = r"[ \t\n\r]*"
_OPEN = re.compile(_WS + r"\{" + _WS)
#: A key without escapes, and the colon after it: the common case, matched in one go.
_PLAIN_KEY = re.compile(_WS + r'"([^"\\]*)"' + _WS + ":" + _WS)
_QUOTE = re.compile(_WS + '"')
_COLON = re.compile(_WS + ":" + _WS)
_NEXT = re.compile(_WS + "([,}])" + _WS)
_raw_decode = json.JSONDecoder().raw_decode
#: Up to this many keys, a body's keys are checked by counting how often each is spelled, a
#: scan of the body per key; beyond, by one parse that keeps duplicates (linear in the body,
#: where scans per key would grow with its square).
_FEW_KEYS = 16
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting(raw: bytes) -> int:
    """How deeply the arrays and objects of the valid JSON text ``raw`` nest (0 for a bare
    value), brackets inside strings aside. Every pass runs in C."""
    # Without its escaped backslashes and quotes, a string is what lies between two quotes.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def members(text: str, at: int = 0) -> tuple[list[tuple[str, int, int]], int]:
    """The members of the JSON object starting at ``text[at:]``, as ``(key, value_start,
    value_end)`` in order (duplicates included), and the index just past its closing brace.

    ``text`` must already be known to be valid JSON; ``ValueError`` otherwise.
    """
    opened = _OPEN.match(text, at)
    if opened is None:
        raise ValueError("not a JSON object")
    i = opened.end()
    found: list[tuple[str, int, int]] = []
    if text.startswith("}", i):
        return found, i + 1
    try:
        while True:
            plain = _PLAIN_KEY.match(text, i)
            if plain is not None:
                key, start = plain.group(1), plain.end()
            else:
                quote = _QUOTE.match(text, i)
                if quote is None:
                    raise ValueError("expected a key")
                key, after = scanstring(text, quote.end())
                colon = _COLON.match(text, after)
                if colon is None:
                    raise ValueError("expected a colon")
                start = colon.end()
            _, end = _raw_decode(text, start)
            found.append((key, start, end))
            separator = _NEXT.match(text, end)
            if separator is None:
                raise ValueError("expected a comma or a closing brace")
            if separator.group(1) == "}":
                return found, separator.end(1)
            i = separator.end()
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"cannot walk the object: {e}") from None


def duplicate_key(raw: bytes, body: dict[str, Any]) -> str | None:
    """The first top-level key ``raw`` holds twice (``body`` is its parse), or None.

    orjson keeps the last of duplicated keys, while some upstreams keep the first: a body
    that says two things must be refused, not routed by one reading and served by another.
    """
    # Each key is spelled at least once, so counts that add up to the number of keys mean
    # that each is spelled exactly once; without escapes, no key can be spelled differently.
    # ``find``, not ``in``: on bytes, ``in`` makes and drops a TypeError first.
    if (len(body) <= _FEW_KEYS and raw.find(b"\\") < 0
            and sum(map(raw.count, map(_spelled, body))) == len(body)):
        return None
    seen: set[str] = set()
    for key, _ in json.loads(raw, object_pairs_hook=list):
        if key in seen:
            return key
        seen.add(key)
    return None


@lru_cache(maxsize=512)
def _spelled(key: str) -> bytes:
    """``key`` as a JSON string without escapes: what a body holding it must contain."""
    return b'"%s"' % key.encode()


def set_member(text: str, key: str, value: str, at: int = 0) -> str:
    """``text`` with member ``key`` of the object at ``text[at:]`` set to the JSON ``value``:
    replaced where it is, or added first. Nothing else changes."""
    found, _ = members(text, at)
    for name, start, end in found:
        if name == key:
            return text[:start] + value + text[end:]
    opening = text.index("{", at) + 1
    member = f"{json.dumps(key)}: {value}" + (", " if found else "")
    return text[:opening] + member + text[opening:]
