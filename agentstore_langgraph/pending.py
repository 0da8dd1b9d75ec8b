"""Read-your-writes: the ops a saver published per thread and has not yet seen applied."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from producer.errors import LostOpsError


class StaleReadError(TimeoutError):
    """A read waited for this saver's own writes to that thread longer than allowed."""


class Pending:
    """Op ids per thread; a read of a thread first waits for that thread's ops.

    `wait(op_ids, timeout)` is the producer's: it returns once a worker applied them all.
    """

    def __init__(self, wait: Callable[[list[str], float], None], timeout: float) -> None:
        self._wait = wait
        self._timeout = timeout
        self._lock = threading.Lock()
        self._ops: dict[str, list[str]] = {}

    def add(self, thread_id: str, op_id: str) -> None:
        with self._lock:
            self._ops.setdefault(thread_id, []).append(op_id)

    def settle(self, thread_ids: Iterable[str] | None = None) -> None:
        """Wait until the ops of `thread_ids` (None: of every thread) are applied.

        Free when nothing is pending for them. Raises `StaleReadError` after the timeout
        rather than let a read miss this saver's own writes.
        """
        with self._lock:
            threads = list(self._ops) if thread_ids is None else list(thread_ids)
            ops = [op for t in threads for op in self._ops.get(t, ())]
        if not ops:
            return
        try:
            self._wait(ops, self._timeout)
        except TimeoutError as exc:
            raise StaleReadError(
                f"{len(ops)} write(s) this saver made to thread(s) {threads[:3]} were not applied "
                f"within {self._timeout:g}s (are the workers running?); not reading them stale"
            ) from exc
        except LostOpsError:
            self._forget(threads, set(ops))
            raise
        self._forget(threads, set(ops))

    def _forget(self, threads: list[str], done: set[str]) -> None:
        with self._lock:
            for t in threads:
                left = [op for op in self._ops.get(t, ()) if op not in done]
                if left:
                    self._ops[t] = left
                else:
                    self._ops.pop(t, None)
