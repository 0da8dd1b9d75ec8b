"""Pooled psycopg2 connections for many threads: at most `maxconn` open, a free one taken
without a lock.

psycopg2's `ThreadedConnectionPool`, with a `BoundedSemaphore` in front of it so that threads
wait rather than fail when it is exhausted, cost a one-row read ~15 µs of the ~60 µs of client
CPU it takes in all (two locks, a Python-level condition, the pool's key bookkeeping). Here a
free connection is taken with `list.pop()` and given back with `list.append()`, each atomic
under the GIL; only a thread that finds none takes the lock, to open one or to wait for one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2.extensions

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class PoolClosed(Exception):
    """The pool was closed (`closeall`)."""


class PoolTimeout(Exception):
    """No connection was free within the pool's timeout, and `maxconn` were open."""


class ConnectionPool:
    """Connections made by `connect()`: `minconn` opened now, up to `maxconn` on demand; a
    thread that finds all `maxconn` in use waits up to `timeout_s` for one."""

    def __init__(
        self, connect: Callable[[], Any], minconn: int, maxconn: int, timeout_s: float
    ) -> None:
        self._connect = connect
        self._maxconn = maxconn
        self._timeout_s = timeout_s
        self._free: list[Any] = []
        self._open = 0  # free or in use; changed under the lock only
        self._waiting = 0
        self._changed = threading.Condition(threading.Lock())
        self.closed = False
        try:
            for _ in range(minconn):
                self._free.append(connect())
                self._open += 1
        except BaseException:
            self.closeall()
            raise

    def getconn(self) -> Any:
        """A connection for this thread's exclusive use until `putconn`. Raises `PoolTimeout`,
        `PoolClosed`, or what `connect()` raises."""
        try:
            return self._free.pop()
        except IndexError:
            return self._wait_or_open()

    def putconn(self, conn: Any, close: bool = False) -> None:
        """Give `conn` back; closed instead if `close`, if it is unusable, or if the pool is."""
        # The pool's connections run in autocommit, and a write ends its own transaction
        # (COMMIT, or ROLLBACK on any error); one still in a transaction, or in an unknown
        # state, is closed rather than trusted to the next thread.
        if close or self.closed or conn.closed or conn.get_transaction_status() != _IDLE:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            with self._changed:
                self._open -= 1
                self._changed.notify()
            return
        self._free.append(conn)
        # A thread that found no free connection counted itself under the lock before it
        # looked: if it looked before the append above, this sees its count and wakes it.
        if self._waiting:
            with self._changed:
                self._changed.notify()

    def closeall(self) -> None:
        """Close the free connections now, and every other one when it is given back."""
        with self._changed:
            self.closed = True
            while self._free:
                with contextlib.suppress(psycopg2.Error):
                    self._free.pop().close()
                self._open -= 1
            self._changed.notify_all()

    def _wait_or_open(self) -> Any:
        deadline = time.monotonic() + self._timeout_s
        with self._changed:
            self._waiting += 1
            try:
                while True:
                    if self.closed:
                        raise PoolClosed("the PostgreSQL client is closed")
                    if self._free:
                        return self._free.pop()
                    if self._open < self._maxconn:
                        self._open += 1
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolTimeout(
                            f"no free PostgreSQL connection within {self._timeout_s} s "
                            f"(pool max {self._maxconn})"
                        )
                    self._changed.wait(remaining)
            finally:
                self._waiting -= 1
        try:
            return self._connect()
        except BaseException:
            with self._changed:
                self._open -= 1
                self._changed.notify()
            raise
