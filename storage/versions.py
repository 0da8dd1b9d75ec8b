"""Hybrid logical clock versions: sortable strings that never go backwards within a process."""

from __future__ import annotations

import numbers
import re
import secrets
import threading
import time

from . import forks
from .errors import ValidationError

# What a stored or queued version may look like: also versions written before integer
# versions existed (any such string), so old messages and exports still apply.
VERSION_RE = re.compile(r"^[0-9A-Za-z._:-]{1,64}$")
# 15 digits of milliseconds, 6 of logical counter, a node: plain string order is time order.
_CLOCK_VERSION_RE = re.compile(r"^[0-9]{15}\.[0-9]{6}\.[0-9A-Za-z_-]{1,40}$")
_DIGITS_RE = re.compile(r"^[0-9]{1,15}$")
_WIDTH = 15
MAX_INT_VERSION = 10**_WIDTH - 1
_COUNTER_LIMIT = 1_000_000


class HybridLogicalClock:
    """Issues versions `MMMMMMMMMMMMMMM.CCCCCC.NNNNNNNN` that strictly increase in this process.

    The wall clock moving backwards (NTP step) does not make versions go backwards: the
    logical counter keeps advancing until the wall clock catches up again.
    """

    def __init__(self, node: str | None = None) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0
        self._set_node(node or secrets.token_hex(4))

    def _set_node(self, node: str) -> None:
        self._node = node
        # A version's first and last parts, formatted once per millisecond and once: a
        # save's version then costs one format of the counter.
        self._head = f"{self._last_ms:015d}."
        self._tail = f".{node}"

    def _after_fork_in_child(self) -> None:
        # A forked child must not issue the same versions as its parent.
        self._set_node(secrets.token_hex(4))
        self._lock = threading.Lock()

    def now(self) -> str:
        with self._lock:
            wall_ms = time.time_ns() // 1_000_000
            if wall_ms > self._last_ms:
                self._last_ms, self._counter = wall_ms, 0
                self._head = f"{wall_ms:015d}."
            else:
                self._counter += 1
                if self._counter >= _COUNTER_LIMIT:
                    self._last_ms, self._counter = self._last_ms + 1, 0
                    self._head = f"{self._last_ms:015d}."
            return f"{self._head}{self._counter:06d}{self._tail}"


_clock = HybridLogicalClock()
forks.watch(_clock)


def new_version() -> str:
    """A fresh version from this process's hybrid logical clock."""
    return _clock.now()


def normalize_version(value: object) -> str:
    """The stored form of a caller's `version=`; `ValidationError` if it is not one.

    An integer 0..MAX_INT_VERSION (any `numbers.Integral` but bool, or a string of up to
    15 digits) becomes 15 zero-padded digits, so string order is numeric order: 9 < 10. It
    sorts like the millisecond timestamp it equals, before every automatic version of that
    millisecond. A version from `new_version()` (e.g. read back from an export) is kept.
    Other strings are refused: they would compare as text ("9" after "10").
    """
    if isinstance(value, str):
        if _CLOCK_VERSION_RE.match(value):
            return value
        if _DIGITS_RE.match(value):
            return value.rjust(_WIDTH, "0")
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        if 0 <= number <= MAX_INT_VERSION:
            return f"{number:0{_WIDTH}d}"
    raise ValidationError(
        f"version must be an integer from 0 to {MAX_INT_VERSION:,} (or a string of up to "
        f"{_WIDTH} digits), or a version agentstore issued; got {value!r:.80}"
    )
