"""What this producer published and has not seen confirmed, and waiting for it."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable

import redis

from . import wire
from .errors import DeadLetteredError

log = logging.getLogger(__name__)
_CHUNK = 10_000
_MAX_FAILED = 10_000


class Tracker:
    """Op id -> message id for unconfirmed ops, bounded to `max_tracked` entries.

    An op is confirmed when its message has left `pending`: applied, or dead-lettered (then
    its op id is in the dead-letter hash). Past the bound, confirmed entries are swept, and
    if that is not enough the oldest are forgotten (with a warning): they are still
    delivered, only `wait()` without op ids no longer covers them.
    """

    def __init__(self, client: redis.Redis, max_tracked: int = 100_000) -> None:
        self._redis = client
        self._max = max_tracked
        self._lock = threading.Lock()
        self._outstanding: dict[str, str] = {}
        self._failed: dict[str, str] = {}
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
                self._confirm(oldest)
        with self._lock:
            excess = len(self._outstanding) - self._max
            if excess > 0:
                for op_id in list(self._outstanding)[:excess]:
                    del self._outstanding[op_id]
                log.warning("forgot %d unconfirmed ops to stay within max_tracked", excess)

    def _confirm(self, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Check `(op id, message id)` pairs; forget confirmed ones; return unconfirmed ones."""
        if not items:
            return []
        message_ids = list(dict.fromkeys(mid for _, mid in items))
        pipe = self._redis.pipeline(transaction=False)
        pipe.zmscore(wire.PENDING_KEY, message_ids)
        pipe.hmget(wire.DLQ_KEY, [op_id for op_id, _ in items])
        # A message refused as a whole (malformed) is dead-lettered by its message id.
        pipe.hmget(wire.DLQ_KEY, message_ids)
        scores, dead, dead_messages = pipe.execute()
        still = {mid for mid, score in zip(message_ids, scores, strict=True) if score is not None}
        refused = {
            mid: record
            for mid, record in zip(message_ids, dead_messages, strict=True)
            if record is not None
        }
        left = []
        with self._lock:
            for (op_id, mid), record in zip(items, dead, strict=True):
                if mid in still:
                    left.append((op_id, mid))
                    continue
                self._outstanding.pop(op_id, None)
                record = record if record is not None else refused.get(mid)
                if record is not None:
                    self._failed[op_id] = _error_of(record)
                    if len(self._failed) > _MAX_FAILED:
                        del self._failed[next(iter(self._failed))]
        return left

    def wait(self, op_ids: Iterable[str] | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            if op_ids is None:
                items = list(self._outstanding.items())
                wanted = [o for o, _ in items] + list(self._failed)
            else:
                wanted = list(dict.fromkeys(op_ids))
                items = [(o, self._outstanding.get(o, o)) for o in wanted]
            failed = {o: self._failed[o] for o in wanted if o in self._failed}
        self._raise_failed(failed)
        delay = 0.002
        while True:
            try:
                left = []
                for start in range(0, len(items), _CHUNK):
                    left += self._confirm(items[start : start + _CHUNK])
                items = left
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The broker may be restarting; keep polling until our own deadline.
                log.debug("wait: broker unavailable (%s), polling on", type(exc).__name__)
            with self._lock:
                failed = {o: self._failed[o] for o in wanted if o in self._failed}
            self._raise_failed(failed)
            if not items:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(items)} op(s) not applied within {timeout}s (first: {items[0][0]}); "
                    "is a worker running?"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    def _raise_failed(self, failed: dict[str, str]) -> None:
        if failed:
            op_id, error = next(iter(failed.items()))
            with self._lock:
                for o in failed:
                    self._failed.pop(o, None)
            raise DeadLetteredError(op_id, error)


def _error_of(record: bytes) -> str:
    try:
        error = json.loads(record).get("error")
    except (ValueError, AttributeError):
        return "unreadable dead letter"
    return str(error)
