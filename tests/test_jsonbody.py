"""Editing a body in place: properties of first_proxy.jsonbody over JSON of random shapes and
spellings (fixed seed; a failure prints its example)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from first_proxy.jsonbody import duplicate_key, members, nesting, set_member

PROPERTIES = settings(max_examples=200, deadline=None, derandomize=True, database=None)

#: Strings heavy in what a scanner can trip over: quotes, backslashes, brackets, escapes.
tricky = st.text(st.sampled_from('ab"\\[]{}:,\n\t\u00e9\u2028\U0001f600 '), max_size=12)
leaves = st.none() | st.booleans() | st.integers(-(2**100), 2**100) | st.floats(
    allow_nan=False, allow_infinity=False) | tricky
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(tricky, inner, max_size=3), max_leaves=16)
objects = st.dictionaries(tricky, values, max_size=5)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def spelled(value: Any, ascii_only: bool, spaced: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only,
                      separators=(" , ", " : ") if spaced else (",", ":"))


@PROPERTIES
@given(value=values, ascii_only=st.booleans(), spaced=st.booleans())
def test_nesting_is_the_depth_of_the_value(value: Any, ascii_only: bool, spaced: bool) -> None:
    assert nesting(spelled(value, ascii_only, spaced).encode()) == depth(value)


@PROPERTIES
@given(body=objects, key=tricky, new=values, ascii_only=st.booleans(), spaced=st.booleans())
def test_set_member_changes_that_member_alone(body: dict[str, Any], key: str, new: Any,
                                              ascii_only: bool, spaced: bool) -> None:
    text = spelled(body, ascii_only, spaced)
    edited = set_member(text, key, json.dumps(new))
    assert json.loads(edited) == {**body, key: new}
    # Every other member is still spelled as it was, in its place.
    kept = [(name, text[start:end]) for name, start, end in members(text)[0] if name != key]
    assert [(name, edited[start:end]) for name, start, end in members(edited)[0]
            if name != key] == kept


@PROPERTIES
@given(body=objects.filter(bool), ascii_only=st.booleans(), data=st.data())
def test_duplicate_key_finds_a_key_given_twice(body: dict[str, Any], ascii_only: bool,
                                               data: st.DataObject) -> None:
    text = spelled(body, ascii_only, False)
    assert duplicate_key(text.encode(), orjson.loads(text)) is None
    key = data.draw(st.sampled_from(sorted(body)))
    # The same key again, spelled with escapes where it can be.
    again = "".join(f"\\u{ord(c):04x}" if c.isalpha() else json.dumps(c)[1:-1] for c in key)
    twice = text[:-1] + f', "{again}": 1}}'
    assert duplicate_key(twice.encode(), orjson.loads(twice)) == key


class Scanned(bytes):
    """Bytes that count how often they are scanned for a substring."""

    scans = 0

    def count(self, *args: Any) -> int:
        self.scans += 1
        return super().count(*args)


def test_a_body_of_many_keys_is_not_scanned_once_per_key() -> None:
    # Scans per key grow with the square of the body: 50,000 keys (526 KiB) held the
    # gateway's event loop for 30 s. However many keys, a handful of scans at most.
    body = {f"k{i}": i for i in range(5000)}
    raw = Scanned(orjson.dumps(body))
    assert duplicate_key(raw, body) is None
    assert raw.scans <= 16
    twice = Scanned(raw[:-1] + b', "k3": 0}')
    assert duplicate_key(twice, orjson.loads(bytes(twice))) == "k3"
    assert twice.scans <= 16
