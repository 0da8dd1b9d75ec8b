"""Checks that a payload is plain JSON that every backend stores and returns unchanged."""

from __future__ import annotations

import json
from typing import Any

from .errors import ValidationError

# Cosmos DB's item limit is 2 MiB including our wrapper fields; keep the payload safely below.
MAX_PAYLOAD_BYTES = 2_000_000
# Integers beyond 2**53 lose precision in JavaScript-based stores (Cosmos DB is one): I-JSON.
MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 64

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _parse_int(text: str) -> int:
    value = int(text)
    if len(text) > 15 and abs(value) > MAX_SAFE_INT:
        raise ValidationError(
            f"integer {text[:20]}... is outside ±(2**53-1); store it as a string to keep it exact"
        )
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    # JSON has one number type: Cosmos DB returns 1.0 as 1 and -0.0 as 0, and PostgreSQL's
    # JSONB returns 1e16 and above as integers and -0.0 as 0.0. Refusing them keeps the
    # promise that a payload comes back with the same types.
    if value.is_integer():
        small = abs(value) <= MAX_SAFE_INT
        instead = f"the int {int(value)} or as a string" if small else "a string"
        raise ValidationError(
            f"has the float {text}, which the stores return as an int (or without its sign); "
            f"save it as {instead}"
        )
    return value


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
    numbers, integers within ±(2**53-1), floats with a fractional part (1.0, -0.0 and 1e300
    come back as ints from some store), no NUL characters, valid UTF-8, at most
    `MAX_PAYLOAD_BYTES` encoded and `MAX_DEPTH` levels deep.
    """
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a dict, got {type(value).__name__}")
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} is not JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{field} is nested more than {MAX_DEPTH} levels deep") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{field} contains a lone surrogate; it is not valid UTF-8") from None
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            f"{field} is {size:,} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES:,} bytes"
        )
    if not _depth_ok(text):
        raise ValidationError(f"{field} is nested more than {MAX_DEPTH} levels deep")
    if "\\u0000" in text and _has_nul(value):
        raise ValidationError(f"{field} contains NUL (\\u0000), which the stores cannot keep")
    # Tuples, non-string keys and the like serialise but come back different: refuse them.
    try:
        back = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except ValidationError as exc:
        raise ValidationError(f"{field} {exc}") from None
    if back != value:
        raise ValidationError(
            f"{field} does not survive a JSON round trip (tuples, non-string keys or "
            "other non-JSON types); use lists, dicts with string keys, and plain values"
        )
    return text
