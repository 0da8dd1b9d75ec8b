"""What this producer published and has not seen confirmed, and waiting for it."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from broker import keys

from .errors import BrokerUnavailableError, DeadLetteredError, LostOpsError

log = logging.getLogger(__name__)
_CHUNK = 10_000


class Tracker:
    """Op id -> message id for ops not yet seen applied, bounded to `max_tracked` entries.

    An op is applied when a worker confirmed its message (`agentstore:done`) and none of
    its dead letters remain. Dead-lettered ops stay tracked until their dead letter is
    replayed or purged; ops the broker lost are reported and then forgotten. Past the
    bound, applied entries are swept, and if that is not enough the oldest are forgotten
    (with a warning): they are still delivered, only `wait()` without op ids no longer
    covers them.
    """

    def __init__(self, client: redis.Redis, max_tracked: int = 100_000) -> None:
        self._redis = client
        self._max = max_tracked
        self._lock = threading.Lock()
        self._outstanding: dict[str, str] = {}
        self._last_sweep = 0.0

    def __len__(self) -> int:
        return len(self._outstanding)

    def add(self, op_ids: Iterable[str], message_id: str) -> None:
        with self._lock:
            for op_id in op_ids:
                self._outstanding[op_id] = message_id
            over = len(self._outstanding) > self._max
        if over:
            self._bound()

    def _bound(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep > 1.0:
            self._last_sweep = now
            with self._lock:
                oldest = list(self._outstanding.items())[:_CHUNK]
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self._check(oldest)
        with self._lock:
            excess = len(self._outstanding) - self._max
            if excess > 0:
                for op_id in list(self._outstanding)[:excess]:
                    del self._outstanding[op_id]
                log.warning("forgot %d unconfirmed ops to stay within max_tracked", excess)

    def _check(self, items: list[tuple[str, str]]) -> _Status:
        """Where `(op id, message id)` pairs are; forgets the applied ones."""
        status = _Status()
        if not items:
            return status
        message_ids = list(dict.fromkeys(mid for _, mid in items))
        # One MULTI: a consistent view of what the worker's settle script changes at once.
        pipe = self._redis.pipeline(transaction=True)
        pipe.zmscore(keys.PENDING_KEY, message_ids)
        pipe.zmscore(keys.DONE_KEY, message_ids)
        pipe.hmget(keys.DLQ_KEY, [op_id for op_id, _ in items])
        # A message refused as a whole (malformed) is dead-lettered by its message id.
        pipe.hmget(keys.DLQ_KEY, message_ids)
        queued, done, dead, dead_messages = pipe.execute()
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

    def wait(self, op_ids: Iterable[str] | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            if op_ids is None:
                items = list(self._outstanding.items())
            else:
                # An op id this producer does not track may be another's single save,
                # whose message id is its op id.
                items = [(o, self._outstanding.get(o, o)) for o in dict.fromkeys(op_ids)]
        dead: dict[str, str] = {}
        lost: list[str] = []
        unreachable: Exception | None = None
        delay = 0.002
        while True:
            try:
                pending: list[tuple[str, str]] = []
                for start in range(0, len(items), _CHUNK):
                    status = self._check(items[start : start + _CHUNK])
                    pending += status.pending
                    dead.update(status.dead)
                    lost += status.lost
                items, unreachable = pending, None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The broker may be restarting; keep polling until our own deadline.
                log.debug("wait: broker unavailable (%s), polling on", type(exc).__name__)
                unreachable = exc
            remaining = deadline - time.monotonic()
            if not items or (remaining <= 0 and (dead or lost)):
                break
            if remaining <= 0:
                first = items[0][0]
                if unreachable is not None:
                    raise BrokerUnavailableError(
                        f"the broker was unreachable until the {timeout:g}s timeout "
                        f"({type(unreachable).__name__}: {str(unreachable)[:200]}); "
                        f"{len(items):,} op(s) in unknown state (first: {first})"
                    ) from None
                raise TimeoutError(
                    f"{len(items):,} op(s) still queued after {timeout:g}s (first: {first}); "
                    "is a worker running?"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)
        if dead:
            raise DeadLetteredError(dead, still_pending=len(items))
        if lost:
            with self._lock:
                for op_id in lost:
                    self._outstanding.pop(op_id, None)
            raise LostOpsError(lost)


@dataclass(slots=True)
class _Status:
    pending: list[tuple[str, str]] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)


def _error_of(record: bytes) -> str:
    try:
        error = json.loads(record).get("error")
    except (ValueError, AttributeError):
        return "unreadable dead letter"
    return str(error)
