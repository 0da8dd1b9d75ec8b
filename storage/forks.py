"""Fork safety: what a process holds (sockets, pools, threads, locks) is never used by its child.

A forked child shares its parent's sockets: two processes talking on one connection read each
other's answers. Objects that hold such things implement `ForkAware` and `watch()` themselves;
in a forked child, before any other code runs there, each one drops what it inherited (without
closing it: closing can talk on the parent's socket, e.g. psycopg2's `close()` sends Terminate)
and makes its own on first use. `PerProcess` is that for one resource.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None:
        """Called in a forked child while only the forking thread exists: no I/O, no blocking."""


_watched: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def watch(obj: ForkAware) -> None:
    """Call `obj._after_fork_in_child()` in every child forked while `obj` is alive."""
    _watched.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_watched):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PerProcess(Generic[T]):
    """The value `make()` returns, made once per process: a forked child makes its own.

    `initial` is the first process's value, if already made. The inherited value is dropped
    in the child, never closed; psycopg2 connections garbage-collected in another process
    than the one that opened them do not close the server session (they check the pid), and
    other sockets are only closed, never shut down, so the parent's stay usable.
    """

    def __init__(self, make: Callable[[], T], initial: T | None = None) -> None:
        self._make = make
        self._value = initial
        self._lock = threading.Lock()
        watch(self)

    def get(self) -> T:
        """This process's value, made now if it has none yet."""
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._make()
                value = self._value
        return value

    def made(self) -> T | None:
        """This process's value if it was made, else None (for `close()`: nothing to make)."""
        return self._value

    def _after_fork_in_child(self) -> None:
        # A parent thread may have held the lock at fork time: it would never be released.
        self._lock = threading.Lock()
        self._value = None
