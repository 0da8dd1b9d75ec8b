"""Read-your-writes: the ops a saver published per thread and has not yet seen applied."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator

from producer.errors import LostOpsError


class StaleReadError(TimeoutError):
    """A read waited for this saver's own writes to that thread longer than allowed."""


# Ops a producer still awaits are kept; the rest are swept after this many adds at least
# (or as many as were kept at the last sweep: a sweep's cost stays one check per add).
SWEEP_EVERY = 4096


class Pending:
    """Op ids per thread; a read of a thread first waits for that thread's ops.

    The wait is the caller's: `settle` takes `Producer.wait`, `asettle` takes
    `AsyncProducer.wait`. Either returns once a worker applied the ops, whichever producer
    published them, so one saver's sync and async calls see each other's writes.

    Bounded: a thread written and never read again would keep its op ids forever, so every
    `SWEEP_EVERY` adds, ops their producer no longer awaits (`is_unconfirmed`: seen applied,
    or past its tracker's bound) are forgotten.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._ops: dict[str, list[str]] = {}
        self._awaited: dict[str, Callable[[str], bool]] = {}
        # Each `is_unconfirmed` given, kept once: a producer's is a new bound method at every
        # access, and one kept per op made the garbage collector walk thousands more objects.
        self._checks: dict[Callable[[str], bool], Callable[[str], bool]] = {}
        self._added = 0
        self._sweep_at = SWEEP_EVERY

    def __len__(self) -> int:
        return len(self._awaited)

    def add(self, thread_id: str, op_id: str, unconfirmed: Callable[[str], bool]) -> None:
        """Track `op_id` for `thread_id`; `unconfirmed` is its producer's `is_unconfirmed`."""
        with self._lock:
            self._ops.setdefault(thread_id, []).append(op_id)
            self._awaited[op_id] = self._checks.setdefault(unconfirmed, unconfirmed)
            self._added += 1
            if self._added >= self._sweep_at:
                self._sweep()

    def _sweep(self) -> None:
        done = {op for op, unconfirmed in self._awaited.items() if not unconfirmed(op)}
        self._drop(list(self._ops), done)
        self._checks = {check: check for check in self._awaited.values()}
        self._added = 0
        self._sweep_at = max(SWEEP_EVERY, len(self._awaited))

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
            self._drop(threads, done)

    def _drop(self, threads: list[str], done: set[str]) -> None:
        for t in threads:
            left = [op for op in self._ops.get(t, ()) if op not in done]
            if left:
                self._ops[t] = left
            else:
                self._ops.pop(t, None)
        for op in done:
            self._awaited.pop(op, None)
