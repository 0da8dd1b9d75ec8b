"""Read-your-writes: the ops a saver published per thread and has not yet seen applied."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator

from producer.errors import LostOpsError


class StaleReadError(TimeoutError):
    """A read waited for this saver's own writes to that thread longer than allowed."""


class Pending:
    """Op ids per thread; a read of a thread first waits for that thread's ops.

    The wait is the caller's: `settle` takes `Producer.wait`, `asettle` takes
    `AsyncProducer.wait`. Either returns once a worker applied the ops, whichever producer
    published them, so one saver's sync and async calls see each other's writes.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._ops: dict[str, list[str]] = {}

    def add(self, thread_id: str, op_id: str) -> None:
        with self._lock:
            self._ops.setdefault(thread_id, []).append(op_id)

    def settle(
        self, wait: Callable[[list[str], float], None], thread_ids: Iterable[str] | None = None
    ) -> None:
        """Wait until the ops of `thread_ids` (None: of every thread) are applied.

        Free when nothing is pending for them. Raises `StaleReadError` after the timeout
        rather than let a read miss this saver's own writes.
        """
        threads, ops = self._due(thread_ids)
        if ops:
            with self._settling(threads, ops):
                wait(ops, self._timeout)

    async def asettle(
        self,
        wait: Callable[[list[str], float], Awaitable[None]],
        thread_ids: Iterable[str] | None = None,
    ) -> None:
        """`settle` for asyncio: `wait` is awaited."""
        threads, ops = self._due(thread_ids)
        if ops:
            with self._settling(threads, ops):
                await wait(ops, self._timeout)

    def _due(self, thread_ids: Iterable[str] | None) -> tuple[list[str], list[str]]:
        with self._lock:
            threads = list(self._ops) if thread_ids is None else list(thread_ids)
            return threads, [op for t in threads for op in self._ops.get(t, ())]

    @contextlib.contextmanager
    def _settling(self, threads: list[str], ops: list[str]) -> Iterator[None]:
        try:
            yield
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
