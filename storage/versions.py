"""Hybrid logical clock versions: sortable strings that never go backwards within a process."""

from __future__ import annotations

import re
import secrets
import threading
import time

from . import forks

# 15 digits of milliseconds, 6 of logical counter, 8 hex of node: plain string order is time order.
VERSION_RE = re.compile(r"^[0-9A-Za-z._:-]{1,64}$")
_COUNTER_LIMIT = 1_000_000


class HybridLogicalClock:
    """Issues versions `MMMMMMMMMMMMMMM.CCCCCC.NNNNNNNN` that strictly increase in this process.

    The wall clock moving backwards (NTP step) does not make versions go backwards: the
    logical counter keeps advancing until the wall clock catches up again.
    """

    def __init__(self, node: str | None = None) -> None:
        self._node = node or secrets.token_hex(4)
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def _after_fork_in_child(self) -> None:
        # A forked child must not issue the same versions as its parent.
        self._node = secrets.token_hex(4)
        self._lock = threading.Lock()

    def now(self) -> str:
        with self._lock:
            wall_ms = time.time_ns() // 1_000_000
            if wall_ms > self._last_ms:
                self._last_ms, self._counter = wall_ms, 0
            else:
                self._counter += 1
                if self._counter >= _COUNTER_LIMIT:
                    self._last_ms, self._counter = self._last_ms + 1, 0
            return f"{self._last_ms:015d}.{self._counter:06d}.{self._node}"


_clock = HybridLogicalClock()
forks.watch(_clock)


def new_version() -> str:
    """A fresh version from this process's hybrid logical clock."""
    return _clock.now()
