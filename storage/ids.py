"""Identifier rules shared by every backend: what an id may contain and how row ids are built."""

from __future__ import annotations

import re

from .errors import ValidationError

MAX_ID_CHARS = 255
# Cosmos DB forbids `/ \ ? #` in ids and its Python SDK also refuses tab, CR, LF and a
# trailing space; `|` is our separator and `%` our escape character (so it goes first).
ESCAPES = {
    "%": "%25",
    "/": "%2F",
    "\\": "%5C",
    "?": "%3F",
    "#": "%23",
    "|": "%7C",
    "\t": "%09",
    "\n": "%0A",
    "\r": "%0D",
    " ": "%20",
}
# A regular expression finds one without making a string per character, as a set would.
_NEEDS_ESCAPE = re.compile("[" + re.escape("".join(ESCAPES)) + "]")
_TRANSLATION = str.maketrans(ESCAPES)


def check_id(field: str, value: object) -> str:
    """Return `value` if it is a usable identifier, else raise `ValidationError` naming `field`."""
    # The usual id first, at the cost of three C calls: an ASCII string is valid UTF-8.
    if (
        type(value) is str
        and 0 < len(value) <= MAX_ID_CHARS
        and value.isascii()
        and "\x00" not in value
    ):
        return value
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(f"{field} must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise ValidationError(
            f"{field} is {len(value)} characters long; the limit is {MAX_ID_CHARS}"
        )
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{field} contains a lone surrogate; it is not valid UTF-8") from None
    return value


def _escape(part: str) -> str:
    return part.translate(_TRANSLATION) if _NEEDS_ESCAPE.search(part) else part


def row_id(*parts: tuple[str, str]) -> str:
    """Build an injective, Cosmos-safe row id from `(field, value)` pairs.

    Escaping `%`, `|` and the characters Cosmos forbids, then joining with `|`, keeps
    ("a_b", "c") and ("a", "b_c") apart, unlike the seed's `f"{a}_{b}"`.
    """
    rid = "|".join([_escape(value) for _, value in parts])
    if len(rid) > MAX_ID_CHARS:
        names = " + ".join(field for field, _ in parts)
        raise ValidationError(
            f"{names} too long together: the escaped row id is {len(rid)} characters; "
            f"the limit is {MAX_ID_CHARS}"
        )
    return rid


def _pair(first: tuple[str, str], second: tuple[str, str]) -> str:
    # `row_id` of two parts without its generality: a worker builds one or two per op.
    rid = f"{_escape(first[1])}|{_escape(second[1])}"
    return rid if len(rid) <= MAX_ID_CHARS else row_id(first, second)  # which raises


def state_row_id(agent_id: str, state_id: str) -> str:
    return _pair(("agent_id", agent_id), ("state_id", state_id))


def task_row_id(agent_id: str, task_id: str) -> str:
    return _pair(("agent_id", agent_id), ("task_id", task_id))


def transaction_row_id(case_id: str, txn_id: str) -> str:
    return _pair(("case_id", case_id), ("transaction id", txn_id))
