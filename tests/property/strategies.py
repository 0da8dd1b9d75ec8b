"""Hypothesis strategies for hostile JSON-like payloads and ids, and the rule they obey.

`why_invalid` is the acceptance rule written independently of `storage.payload`: a value it
accepts must round-trip exactly on every backend; one it refuses must raise ValidationError.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

MAX_BYTES = 2_000_000
MAX_DEPTH = 64
MAX_INT = 2**53 - 1
MAX_ID = 255

SQL_INJECTION = [
    "'; DROP TABLE agent_states; --",
    "' OR '1'='1",
    '"; DELETE FROM transactions; --',
    "x' UNION SELECT version, state FROM agent_states --",
    "%s",
    "%(x)s",
    "{}",
    "$1",
    "c.id = @p OR 1=1",
    "SELECT * FROM c",
    "\\'",
    "/* */",
]
SPECIAL_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "\u2028\u2029",
    "\ufeff",
    "\uffff",
    "🙂",
    "e\u0301",
    "\x7f\x1b",
    "\t\n\r ",
    " trailing ",
    "%",
    "%25",
    "|",
    "/\\?#",
    *SQL_INJECTION,
]
SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -2.0,
    0.1,
    -2.5,
    1e-7,
    123456.789,
    1e16,
    1.5e17,
    2.0**53,
    1e22,
    1e300,
    -1e300,
    1.7976931348623157e308,
    2.2250738585072014e-308,
    5e-324,
    -5e-324,
    math.nan,
    math.inf,
    -math.inf,
]
SPECIAL_INTS = [0, -1, MAX_INT, -MAX_INT, MAX_INT + 1, -MAX_INT - 1, 2**63, 2**64, 10**300]

characters = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.sampled_from("\x00\x01\"\\'%|/?#\t\n\r é漢🙂"),
)
texts = st.one_of(st.text(characters, max_size=20), st.sampled_from(SPECIAL_TEXT))
long_texts = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["x", "é", "🙂"]),
    st.sampled_from([300, 70_000, 499_990, 2_000_001]),
)
floats = st.one_of(st.floats(), st.sampled_from(SPECIAL_FLOATS))
ints = st.one_of(st.integers(-(2**60), 2**60), st.sampled_from(SPECIAL_INTS), st.integers())
# Not JSON at all: each must be refused, never stored as something else.
foreign = st.sampled_from([(1, 2), frozenset({1}), b"bytes", Decimal("1.5"), object(), 1j])

leaves = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_like = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(texts, children, max_size=4),
    ),
    max_leaves=12,
)


# Always acceptable, so a good share of examples takes the round-trip branch.
def _bad_float(value: float) -> bool:
    # What storage/payload.py refuses: JSONB returns these as ints (1e16 and up) or unsigned.
    return value.is_integer() and (
        abs(value) >= 1e16 or (value == 0 and math.copysign(1, value) < 0)
    )


clean_texts = st.text(st.characters(exclude_characters="\x00"), max_size=20)
clean_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-MAX_INT, MAX_INT),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not _bad_float(f)),
    clean_texts,
)
clean_json = st.recursive(
    clean_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(clean_texts, children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.one_of(texts, st.integers(0, 3).map(lambda i: i), st.none())


def nested(depth: int, as_list: bool) -> dict[str, Any]:
    value: Any = {"leaf": True}
    for _ in range(depth - 1):
        value = [value] if as_list else {"n": value}
    return value if isinstance(value, dict) else {"n": value}


payloads = st.one_of(
    st.dictionaries(clean_texts, clean_json, max_size=6),
    st.dictionaries(texts, json_like, max_size=6),
    st.dictionaries(texts, json_like, max_size=2).map(lambda d: {**d, "_": 0.5}),
    st.builds(lambda k, v: {k: v}, texts, long_texts),
    st.builds(nested, st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3), st.booleans()),
    st.dictionaries(keys, json_like, max_size=3),
    st.dictionaries(texts, st.one_of(json_like, foreign), min_size=1, max_size=3),
    st.one_of(json_like, foreign),  # not a dict at the top
)
clean_ids = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=30)
ids = st.one_of(
    clean_ids,
    texts,
    st.text(characters, min_size=1, max_size=5),
    st.integers(250, 260).map(lambda n: "i" * n),
    st.integers(60, 70).map(lambda n: "🙂" * n),
    st.sampled_from([None, 42, b"id", ("a",)]),
)


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "NUL"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return "lone surrogate"
    return None


def _problem(value: Any, depth: int) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if type(value) is int:
        return None if abs(value) <= MAX_INT else f"int {value} beyond 2**53-1"
    if type(value) is float:
        if not math.isfinite(value):
            return f"non-finite float {value}"
        return f"float {value!r} that JSONB returns changed" if _bad_float(value) else None
    if type(value) is str:
        return _text_problem(value)
    if type(value) not in (dict, list):
        return f"not JSON: {type(value).__name__}"
    if depth > MAX_DEPTH:
        return "too deep"
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict):
            if type(key) is not str:
                return f"key {key!r} is not a string"
            if problem := _text_problem(key):
                return f"key has {problem}"
        if problem := _problem(item, depth + 1):
            return problem
    return None


def why_invalid(value: Any) -> str | None:
    """Why `value` is not an acceptable payload, or None if it must round-trip exactly."""
    if type(value) is not dict:
        return "not a dict"
    if problem := _problem(value, 1):
        return problem
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode()) + text.count('"') + text.count("\\")  # as stored: escaped
    return f"{size} bytes" if size > MAX_BYTES else None


def why_invalid_id(value: Any) -> str | None:
    if type(value) is not str:
        return "not a string"
    if not value:
        return "empty"
    if len(value) > MAX_ID:
        return "too long"
    return _text_problem(value)


# Escaped as three characters each in row ids (Cosmos DB forbids some; `|` separates parts).
_ESCAPED = frozenset("%/\\?#|\t\n\r ")


def why_invalid_key(*parts: Any) -> str | None:
    """Why ids that together name one row are unusable: each, or their row id too long."""
    for part in parts:
        if problem := why_invalid_id(part):
            return problem
    length = sum(len(p) + 2 * sum(c in _ESCAPED for c in p) for p in parts) + len(parts) - 1
    return "row id too long" if length > MAX_ID else None


def assert_exact(got: Any, want: Any, path: str = "$") -> None:
    """`got == want`, and every value of the same type; -0.0 is not 0.0."""
    assert type(got) is type(want), f"{path}: {got!r} ({type(got).__name__}) != {want!r}"
    if isinstance(want, dict):
        assert got.keys() == want.keys(), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_exact(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_exact(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == want and math.copysign(1, got) == math.copysign(1, want), (
            f"{path}: {got!r} != {want!r}"
        )
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
