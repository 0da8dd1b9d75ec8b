"""Checks that a payload is plain JSON that every backend stores and returns unchanged."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from .errors import ValidationError

# Cosmos DB's item limit is 2 MiB including our wrapper fields; keep the payload safely below.
MAX_PAYLOAD_BYTES = 2_000_000
# Integers beyond 2**53 lose precision in JavaScript-based stores (Cosmos DB is one): I-JSON.
MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 64
_EXPONENT_FROM = 1e16  # where float.__repr__ switches to exponent notation

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_FAST_MAX_BYTES = MAX_PAYLOAD_BYTES // 2  # larger payloads take the exact path
_FAST_MAX_NODES = 100_000  # and so do larger (or circular) structures


def _parse_int(text: str) -> int:
    value = int(text)
    if len(text) > 15 and abs(value) > MAX_SAFE_INT:
        raise ValidationError(
            f"integer {text[:20]}... is outside ±(2**53-1); store it as a string to keep it exact"
        )
    return value


def _negative_zero(value: float) -> bool:
    return value == 0 and math.copysign(1.0, value) < 0


def _parse_float(text: str) -> float:
    value = float(text)
    # PostgreSQL's JSONB keeps numbers as decimals: a float Python writes with an exponent
    # (1e+16 and above) comes back as an integer, and -0.0 as 0.0. Refusing those keeps the
    # promise that a payload comes back with the same types. (1.0 is fine: JSONB keeps its
    # ".0", and Cosmos DB items hold payloads as text.)
    if value.is_integer() and (abs(value) >= _EXPONENT_FROM or _negative_zero(value)):
        raise ValidationError(
            f"has the float {text}, which PostgreSQL returns as an int or without its sign; "
            "save it as a string (or as an int if that is what it is)"
        )
    return value


_decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)


def _plain(value: dict[str, Any]) -> int:
    """Only exact JSON types, str keys, ints within ±(2**53-1), floats in [1e-4, 1e16) with a
    fractional part (which excludes NaN and infinities): what every check below accepts,
    and whose text orjson writes exactly as the json module does. Returns how many
    dicts and lists it has (nested at most that deep), or 0 if it is not plain."""
    stack: list[Any] = [value]
    pop, extend = stack.pop, stack.extend
    nodes = 0
    while stack:
        v = pop()
        kind = type(v)
        if kind is str or kind is bool or v is None:
            continue
        if kind is int:
            if not -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                return 0
            continue
        if kind is float:
            if not 1e-4 <= abs(v) < 1e16 or v.is_integer():
                return 0
            continue
        nodes += 1
        if nodes > _FAST_MAX_NODES:
            return 0
        if kind is dict:
            for key in v:
                if type(key) is not str:
                    return 0
            extend(v.values())
        elif kind is list:
            extend(v)
        else:
            return 0
    return nodes


def _fast_encode(value: dict[str, Any]) -> str | None:
    """The JSON text of a plain payload (`_plain`) that passes every check, else None.

    orjson is several times faster than the json module (and twice pydantic-core's
    `to_json`) and, for plain payloads, writes the very same text (escapes and float
    digits: shortest round trip, without an exponent in `_plain`'s range). Anything else,
    including everything refused, takes the exact path, with its exact error message.
    """
    containers = _plain(value)
    if not containers:
        return None
    try:
        data = orjson.dumps(value)
    except Exception:  # a lone surrogate, or nesting too deep for it
        return None
    if len(data) > _FAST_MAX_BYTES or b"\\u0000" in data:
        return None
    text = data.decode("utf-8")
    # No deeper than it has containers: most payloads need no look at the text for depth.
    return text if containers <= MAX_DEPTH or _depth_ok(text) else None


def _depth_ok(text: str) -> bool:
    # Cheap upper bound first: brackets inside strings only make it more conservative.
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return True
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest <= MAX_DEPTH


# Stored size is at most 3x a payload's text (UTF-8 bytes, plus an escape per quote and
# backslash), and no payload's compact text is longer than its text in a message.
_PLAIN_TEXT_MAX_BYTES = MAX_PAYLOAD_BYTES // 3


# Where a save's payload sits in a task body `[[ops], {}, embed]`: ops list 3, op 4, args 5,
# payload 6. A body no deeper than this has no payload deeper than `MAX_DEPTH`.
_BODY_DEPTH = MAX_DEPTH + 5


def decode_plain(data: bytes) -> tuple[Any, bool]:
    """A task body: `json.loads(data.decode("utf-8"))` (raising as it does), and whether
    every save payload in it (a dict at `args` of an op) passes `encode_payload`.

    orjson reads the text, about twice as fast as the json module, and one walk checks
    every number and the depth; an escaped NUL or surrogate, or the size, is looked for in
    the text: no encoding per payload. Whatever is not plain is read again by the json
    module (orjson refuses NaN and Infinity, and reads integers beyond 64 bits as floats),
    so every check and error message sees exactly what it always did.
    """
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8")), False
    if (
        len(data) <= _PLAIN_TEXT_MAX_BYTES
        and (b"\\u" not in data or not _ESCAPES_REFUSED.search(data))
        and _values_plain(decoded)
    ):
        return decoded, True
    return json.loads(data.decode("utf-8")), False


# An escaped NUL, or any escaped surrogate (a lone one is refused; pairs only go the exact way).
_ESCAPES_REFUSED = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _values_plain(root: Any) -> bool:
    """Whether `root` is nested at most `_BODY_DEPTH` deep (itself level 1) and all its
    numbers are ints within ±(2**53-1) or finite floats below 1e16 in magnitude but -0.0."""
    level: list[Any] = [[root]]
    depth = 0
    low, high = -_EXPONENT_FROM, _EXPONENT_FROM
    while True:
        inner: list[Any] = []
        add = inner.append
        for container in level:
            for v in container.values() if type(container) is dict else container:
                kind = type(v)
                if kind is str:  # the most common, first
                    continue
                if kind is dict or kind is list:
                    add(v)
                elif kind is float:
                    if not low < v < high or (v == 0 and math.copysign(1.0, v) < 0):
                        return False
                elif kind is int and not -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                    return False
        if not inner:
            return True
        depth += 1
        if depth > _BODY_DEPTH:
            return False
        level = inner


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def encode_payload(field: str, value: object) -> str:
    """Return the compact JSON text of `value`, or raise `ValidationError` saying what is wrong.

    Accepted: a dict of plain JSON (str keys, str/int/float/bool/None/list/dict values), finite
    numbers, integers within ±(2**53-1), floats but -0.0 and those of magnitude 1e16 or more
    without a fraction (PostgreSQL returns them as ints or unsigned), no NUL characters,
    valid UTF-8, at most `MAX_PAYLOAD_BYTES` as stored and `MAX_DEPTH` levels deep.
    """
    if type(value) is dict:
        fast = _fast_encode(value)
        if fast is not None:
            return fast
    return _encode_exact(field, value)


def _encode_exact(field: str, value: object) -> str:
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a dict, got {type(value).__name__}")
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} is not JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{field} is nested more than {MAX_DEPTH} levels deep") from None
    try:
        # Measured as stored: Cosmos DB items hold the payload as a JSON string, where every
        # quote and backslash gains an escaping backslash.
        size = len(text.encode("utf-8")) + text.count('"') + text.count("\\")
    except UnicodeEncodeError:
        raise ValidationError(f"{field} contains a lone surrogate; it is not valid UTF-8") from None
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            f"{field} is {size:,} bytes as stored JSON; the limit is {MAX_PAYLOAD_BYTES:,} bytes"
        )
    if not _depth_ok(text):
        raise ValidationError(f"{field} is nested more than {MAX_DEPTH} levels deep")
    if "\\u0000" in text and _has_nul(value):
        raise ValidationError(f"{field} contains NUL (\\u0000), which the stores cannot keep")
    # Tuples, non-string keys and the like serialise but come back different: refuse them.
    try:
        back = _decoder.decode(text)
    except ValidationError as exc:
        raise ValidationError(f"{field} {exc}") from None
    if back != value:
        raise ValidationError(
            f"{field} does not survive a JSON round trip (tuples, non-string keys or "
            "other non-JSON types); use lists, dicts with string keys, and plain values"
        )
    return text
