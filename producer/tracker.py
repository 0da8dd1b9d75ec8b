"""What this producer published and has not seen confirmed, and waiting for it."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys

from .errors import BrokerUnavailableError, DeadLetteredError, LostOpsError

log = logging.getLogger(__name__)
_CHUNK = 10_000
# How long a waiting reader's `keys.HURRY_KEY` lasts: longer than the longest pause between
# two of its checks (each sets it again), so it holds for as long as the reader waits.
HURRY_TTL_MS = 250
# A producer that outruns its workers for long forgets on every batch: say so at most this
# often, with the count since the last warning.
_WARN_EVERY_S = 10.0


class Tracked:
    """Op id -> message id for ops not yet seen applied, bounded to `max_tracked` entries.

    An op is applied when a worker confirmed its message (`agentstore:done`) and none of
    its dead letters remain. Dead-lettered ops stay tracked until their dead letter is
    replayed or purged; ops the broker lost are reported and then forgotten. Past the
    bound, applied entries are swept, and if that is not enough the oldest are forgotten
    (with a warning): they are still delivered, only `wait()` without op ids no longer
    covers them. No I/O here: `Tracker` and the asyncio `AsyncTracker` talk to Redis.
    """

    def __init__(self, max_tracked: int = 100_000) -> None:
        self._max = max_tracked
        self._lock = threading.Lock()
        self._outstanding: dict[str, str] = {}
        self._last_sweep = 0.0
        self._forgotten = 0  # since the last warning
        self._warned_at: float | None = None

    def __len__(self) -> int:
        return len(self._outstanding)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._outstanding

    def _record(self, op_ids: Iterable[str], message_id: str) -> list[tuple[str, str]] | None:
        """Track the ops; past the bound, the oldest entries to sweep (maybe none)."""
        with self._lock:
            for op_id in op_ids:
                self._outstanding[op_id] = message_id
            if len(self._outstanding) <= self._max:
                return None
            now = time.monotonic()
            if now - self._last_sweep <= 1.0:
                return []
            self._last_sweep = now
            return list(itertools.islice(self._outstanding.items(), _CHUNK))

    def _forget_excess(self) -> None:
        with self._lock:
            excess = len(self._outstanding) - self._max
            if excess <= 0:
                return
            for op_id in list(itertools.islice(self._outstanding, excess)):
                del self._outstanding[op_id]
            self._forgotten += excess
            now = time.monotonic()
            if self._warned_at is not None and now - self._warned_at < _WARN_EVERY_S:
                return
            self._warned_at, forgotten, self._forgotten = now, self._forgotten, 0
        log.warning(
            "forgot %d unconfirmed ops to stay within max_tracked=%d: they are still "
            "delivered, but wait() without op ids no longer covers them",
            forgotten,
            self._max,
        )

    @staticmethod
    def _query(pipe: Any, items: list[tuple[str, str]], *, hurry: bool = False) -> list[str]:
        """Queue on a MULTI pipeline what `_classify` reads; returns the message ids. With
        `hurry`, also tell the workers someone waits (`keys.HURRY_KEY`)."""
        message_ids = list(dict.fromkeys(mid for _, mid in items))
        if hurry:
            pipe.set(keys.HURRY_KEY, 1, px=HURRY_TTL_MS)
        # One MULTI: a consistent view of what the worker's settle script changes at once.
        pipe.zmscore(keys.PENDING_KEY, message_ids)
        pipe.zmscore(keys.DONE_KEY, message_ids)
        pipe.hmget(keys.DLQ_KEY, [op_id for op_id, _ in items])
        # A message refused as a whole (malformed) is dead-lettered by its message id.
        pipe.hmget(keys.DLQ_KEY, message_ids)
        return message_ids

    def _classify(
        self, items: list[tuple[str, str]], message_ids: list[str], replies: list[Any]
    ) -> Status:
        """Where `(op id, message id)` pairs are; forgets the applied ones."""
        status = Status()
        queued, done, dead, dead_messages = replies[-4:]  # after the hurry SET, if any
        still = {m for m, score in zip(message_ids, queued, strict=True) if score is not None}
        confirmed = {m for m, score in zip(message_ids, done, strict=True) if score is not None}
        refused = {
            mid: record
            for mid, record in zip(message_ids, dead_messages, strict=True)
            if record is not None
        }
        with self._lock:
            for (op_id, mid), record in zip(items, dead, strict=True):
                record = record if record is not None else refused.get(mid)
                if mid in still:
                    status.pending.append((op_id, mid))
                elif record is not None:
                    status.dead[op_id] = _error_of(record)
                elif mid in confirmed:
                    self._outstanding.pop(op_id, None)
                else:
                    status.lost.append(op_id)
        return status

    def _waiting(self, op_ids: Iterable[str] | None, timeout: float) -> _Wait:
        with self._lock:
            if op_ids is None:
                items = list(self._outstanding.items())
            else:
                # An op id this producer does not track may be another's single save,
                # whose message id is its op id.
                items = [(o, self._outstanding.get(o, o)) for o in dict.fromkeys(op_ids)]
        return _Wait(self, items, timeout)

    def _forget(self, op_ids: list[str]) -> None:
        with self._lock:
            for op_id in op_ids:
                self._outstanding.pop(op_id, None)


class Tracker(Tracked):
    """`Tracked` over a blocking Redis client; `wait()` blocks the calling thread."""

    def __init__(self, client: redis.Redis, max_tracked: int = 100_000) -> None:
        super().__init__(max_tracked)
        self._redis = client

    def add(self, op_ids: Iterable[str], message_id: str) -> None:
        sweep = self._record(op_ids, message_id)
        if sweep is None:
            return
        if sweep:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self._check(sweep)
        self._forget_excess()

    def _check(self, items: list[tuple[str, str]], *, hurry: bool = False) -> Status:
        pipe = self._redis.pipeline(transaction=True)
        message_ids = self._query(pipe, items, hurry=hurry)
        return self._classify(items, message_ids, pipe.execute())

    def wait(self, op_ids: Iterable[str] | None, timeout: float) -> None:
        waiting = self._waiting(op_ids, timeout)
        while True:
            try:
                statuses: list[Status] | Exception = [
                    self._check(c, hurry=True) for c in waiting.chunks()
                ]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                statuses = exc
            delay = waiting.checked(statuses)
            if delay is None:
                return
            time.sleep(delay)


class _Wait:
    """One `wait()`: which ops to check next, and when to stop (the I/O is the caller's)."""

    def __init__(self, tracked: Tracked, items: list[tuple[str, str]], timeout: float) -> None:
        self._tracked = tracked
        self._items = items
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._dead: dict[str, str] = {}
        self._lost: dict[str, None] = {}
        self._delay = 0.002

    def chunks(self) -> list[list[tuple[str, str]]]:
        """The ops still to check, in pipelines of a bounded size."""
        items = self._items
        return [items[start : start + _CHUNK] for start in range(0, len(items), _CHUNK)]

    def checked(self, statuses: list[Status] | Exception) -> float | None:
        """Take one round's answers (or the broker's error); the seconds to sleep before the
        next round, or None when done. Raises what `wait()` raises."""
        unreachable = None
        if isinstance(statuses, Exception):
            # The broker may be restarting; keep polling until our own deadline.
            log.debug("wait: broker unavailable (%s), polling on", type(statuses).__name__)
            unreachable = statuses
        else:
            self._items = [pair for status in statuses for pair in status.pending]
            for status in statuses:
                self._dead.update(status.dead)
                self._lost.update(dict.fromkeys(status.lost))
        remaining = self._deadline - time.monotonic()
        items = self._items
        if items and not (remaining <= 0 and (self._dead or self._lost)):
            if remaining <= 0:
                raise self._timed_out(unreachable)
            delay, self._delay = min(self._delay, remaining), min(self._delay * 2, 0.1)
            return delay
        if self._dead:
            raise DeadLetteredError(self._dead, still_pending=len(items))
        if self._lost:
            lost = list(self._lost)
            self._tracked._forget(lost)
            raise LostOpsError(lost)
        return None

    def _timed_out(self, unreachable: Exception | None) -> TimeoutError:
        items, timeout = self._items, self._timeout
        first = items[0][0]
        if unreachable is not None:
            return BrokerUnavailableError(
                f"the broker was unreachable until the {timeout:g}s timeout "
                f"({type(unreachable).__name__}: {str(unreachable)[:200]}); "
                f"{len(items):,} op(s) in unknown state (first: {first})"
            )
        return TimeoutError(
            f"{len(items):,} op(s) still queued after {timeout:g}s (first: {first}); "
            "is a worker running?"
        )


@dataclass(slots=True)
class Status:
    pending: list[tuple[str, str]] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)


def _error_of(record: bytes) -> str:
    try:
        error = json.loads(record).get("error")
    except (ValueError, AttributeError):
        return "unreadable dead letter"
    return str(error)
