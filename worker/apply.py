"""One batch: gather ready messages, apply their ops in one call, confirm, dead-letter the rest."""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import redis

from broker import deadletters, keys, tracing, wire
from storage.base import StorageBackend
from storage.errors import StoreUnavailableError, TransientStorageError, ValidationError
from storage.op_check import check_op
from storage.ops import MAX_SAVE_BYTES
from storage.records import AnyOp

from . import metrics, tallies
from .lease import Heartbeat
from .settings import WorkerSettings

log = logging.getLogger(__name__)

TRANSIENT = (TransientStorageError, redis.ConnectionError, redis.TimeoutError)
# Raw messages one batch takes beyond the delivered one, at most (then the rest of the last):
# with the largest save (`MAX_SAVE_BYTES`, about 4/3 of it as a message), a batch holds a
# few tens of megabytes, however many ops `batch_max` allows.
BATCH_MAX_BYTES = 2 * MAX_SAVE_BYTES

# Pops messages until they hold ARGV[1] ops, counting each by its "<N ops>" header (ours
# put it near the end; anything else counts as one), or ARGV[2] bytes, in one round trip.
# Taking messages by count instead would let a batch of single saves swallow hundreds of
# 500-op messages; by ops alone, a batch of 2 MB saves would hold gigabytes. The first
# element of the reply is 1 if the queue ran dry while a reader waits (KEYS[2] exists).
_TAKE = """
local want = tonumber(ARGV[1])
local room = tonumber(ARGV[2])
local taken = {0}
local ops = 0
while ops < want and room > 0 do
  local m = redis.call('RPOP', KEYS[1])
  if not m then
    taken[1] = redis.call('EXISTS', KEYS[2])
    break
  end
  taken[#taken + 1] = m
  room = room - #m
  local at = string.find(m, '"argsrepr":"<', -2048, true)
  ops = ops + ((at and tonumber(string.match(m, '^(%d+) ops>', at + 13))) or 1)
end
return taken
"""
# The pause between takes once the queue ran dry while a batch fills. The batch closes at the
# window's end whatever arrives, so taking more often would only cost round trips: this
# bounds them (a reader's hurry is seen within it).
_TAKE_PAUSE_S = 0.004


@dataclass(slots=True)
class _Part:
    ops: list[tuple[AnyOp, str]]  # (op, message id)
    attempts: int = 0
    first_failure: float | None = None


@dataclass(slots=True)
class Batch:
    """What one run gathered and what became of it."""

    message_ids: list[str] = field(default_factory=list)
    ops: list[tuple[AnyOp, str]] = field(default_factory=list)
    published: dict[str, float] = field(default_factory=dict)  # message id -> publish time
    # (key, record JSON, failure time): refused messages and ops that could not be applied.
    dead: list[tuple[str, str, float]] = field(default_factory=list)
    failed_ops: int = 0  # of `ops`, dead-lettered instead of applied
    # What the store reported for each committed part, counted once the batch is settled.
    committed: list[tallies.Committed] = field(default_factory=list)
    # (message id or None, reason) of each dead letter, counted once the batch is settled.
    dead_reasons: list[tuple[str | None, str]] = field(default_factory=list)
    # op id -> the trace context its save sent (`broker.tracing`), for ops that have one.
    traces: dict[str, tracing.Carrier] = field(default_factory=dict)
    # The store could not be reached within the retry budget: nothing is confirmed, and the
    # reaper hands the messages out again once their lease lapses.
    unavailable: bool = False


def backoff(attempt: int, tries: int, budget_s: float) -> float:
    """The pause after failed try `attempt` (1-based), doubling, so that `tries` tries span
    about `budget_s`: an outage shorter than AGENTSTORE_RETRY_MAX_S is waited out by
    AGENTSTORE_RETRY_TRIES tries, however fast each one fails. Jitter keeps workers apart."""
    if tries < 2:
        return 0.0
    planned = budget_s * 2.0 ** (attempt - 1) / (2.0 ** (tries - 1) - 1)
    return planned * random.uniform(0.8, 1.0)


class BatchApplier:
    """Applies a task's ops together with up to `batch_max` ops of other ready messages.

    Messages taken straight from the queue are in no one else's hands: if this process
    dies before confirming them, the reaper republishes them from `pending`. While a batch
    runs, `heartbeat` (if given) keeps the reaper off its messages. `store()` gives the
    store, opening it if need be; it may raise `StoreUnavailableError`, which is retried.
    `backend` names the store in metrics; `tally_list`, if given, is the Redis list the
    settle appends the batch's counts to, for the main process (`worker.tallies`), instead
    of this process counting them.
    """

    def __init__(
        self,
        store: Callable[[], StorageBackend],
        client: redis.Redis,
        settings: WorkerSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        heartbeat: Heartbeat | None = None,
        backend: str = "unknown",
        tally_list: str | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self._tally_list = tally_list
        self._redis = client
        self._settings = settings
        self._sleep = sleep
        self._heartbeat = heartbeat
        self._take = client.register_script(_TAKE)

    def run(
        self,
        message_id: str,
        ops: object,
        traces: object = None,
        published: float | None = None,
        *,
        plain: bool = False,
    ) -> Batch:
        """Process the delivered message (`ops` and its trace header `traces` as the task
        received them, `published` its publish time, `plain` whether its body was found
        plain by `storage.payload.decode_plain`) and any others."""
        started = time.monotonic()
        batch = Batch()
        if self._heartbeat is not None:
            self._heartbeat.hold(batch.message_ids)
        try:
            self._add_message(
                batch,
                message_id,
                lambda: wire.ops_of_args(ops, message_id),
                ops,
                traces,
                published,
                plain,
            )
            self._fill(batch)
            with tracing.batch_span(
                batch.traces.values(), ops=len(batch.ops), messages=len(batch.message_ids)
            ) as span:
                self._apply(batch)
                if span is not None:
                    span.set_attribute("agentstore.dead_lettered", len(batch.dead))
                    span.set_attribute("agentstore.store_unavailable", batch.unavailable)
                if batch.unavailable:
                    return batch
                self._confirm(batch)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.release()
        elapsed = time.monotonic() - started
        metrics.batch_done(len(batch.ops), elapsed)
        log.info(
            "applied batch: %d ops from %d messages in %.1f ms, %d dead-lettered",
            len(batch.ops),
            len(batch.message_ids),
            elapsed * 1000,
            len(batch.dead),
            extra={"batch_ops": len(batch.ops), "duration_ms": round(elapsed * 1000, 3)},
        )
        return batch

    def _fill(self, batch: Batch) -> None:
        """Take ready messages until the batch holds `batch_max` ops, or `batch_wait_ms`
        passed, or the queue is dry while a reader waits for ops (`keys.HURRY_KEY`).

        Messages carry one op or hundreds, so they are counted by their ops (`_TAKE`): a
        batch holds at most `batch_max` ops plus the rest of its last message, and stops
        taking after `BATCH_MAX_BYTES` of messages.
        """
        deadline = time.monotonic() + self._settings.batch_wait_ms / 1000
        room = BATCH_MAX_BYTES
        pause = 0.0
        try:
            while True:
                missing = self._settings.batch_max - len(batch.ops) - len(batch.dead)
                if missing <= 0 or room <= 0:
                    return
                if pause:
                    self._sleep(pause)
                hurry, *got = self._take(keys=[keys.QUEUE, keys.HURRY_KEY], args=[missing, room])
                for raw in got:
                    room -= len(raw)
                    self._add_raw(batch, raw)
                remaining = deadline - time.monotonic()
                if hurry or remaining <= 0:
                    return
                pause = min(_TAKE_PAUSE_S, remaining)
        except TRANSIENT as exc:
            # What was taken is processed; the rest waits in the queue for the next task.
            log.warning("could not take more messages: %s", type(exc).__name__)

    def _add_raw(self, batch: Batch, raw: bytes) -> None:
        try:
            message = wire.parse_message(raw)
        except wire.MalformedMessage as exc:
            self._refuse(batch, raw, exc)
            return
        self._add_message(
            batch,
            message.id,
            lambda: message.ops,
            None,
            message.traces,
            message.published,
            message.plain,
        )

    def _add_message(
        self,
        batch: Batch,
        mid: str,
        ops_of: Callable[[], list[Any]],
        raw_args: object,
        traces: object,
        published: float | None,
        plain: bool,
    ) -> None:
        batch.message_ids.append(mid)
        if published is not None:
            batch.published[mid] = published
        try:
            ops = ops_of()
        except wire.MalformedMessage as exc:
            raw = json.dumps(raw_args, default=str)
            self._refuse(batch, raw, exc)
            return
        carriers = tracing.carriers_of(traces, len(ops))
        if carriers is None:
            # The usual message: every op valid, no trace context. One comprehension, without
            # the loop's bookkeeping per op; if an op is refused, the loop below does it all.
            try:
                batch.ops += [(check_op(op, plain_payload=plain), mid) for op in ops]
                return
            except ValidationError:
                pass
        now = time.time()
        for i, op in enumerate(ops):
            trace = None if carriers is None else carriers[i]
            try:
                parsed = check_op(op, plain_payload=plain)
            except ValidationError as exc:
                key, record = deadletters.op_record(op, str(exc), 0, now, now, mid, trace)
                log.error(
                    "dead-lettered op %s of message %s: %s",
                    key,
                    mid,
                    exc,
                    extra={"op_id": key, "message_id": mid},
                )
                batch.dead_reasons.append((mid, "invalid"))
                batch.dead.append((key, record, now))
                continue
            batch.ops.append((parsed, mid))
            if trace is not None:
                batch.traces[parsed.id] = trace

    def _refuse(self, batch: Batch, raw: bytes | str, exc: wire.MalformedMessage) -> None:
        now = time.time()
        key, record = deadletters.message_record(raw, exc.reason, exc.message_id, now)
        log.error("dead-lettered message %s: %s", key, exc.reason, extra={"message_id": key})
        batch.dead_reasons.append((exc.message_id, "malformed"))
        batch.dead.append((key, record, now))
        if exc.message_id is not None and exc.message_id not in batch.message_ids:
            batch.message_ids.append(exc.message_id)

    def _apply(self, batch: Batch) -> None:
        # Halving on a permanent failure isolates the bad ops in about log2(n) rounds each,
        # and every other op still lands.
        stack = [_Part(batch.ops)] if batch.ops else []
        while stack:
            part = stack.pop()
            try:
                error, transient = self._apply_with_retry(part, batch)
            except StoreUnavailableError as exc:
                batch.unavailable = True
                log.warning(
                    "store unavailable after %d tries (%s); %d message(s) left for redelivery",
                    part.attempts,
                    str(exc).split("\n", 1)[0][:300],
                    len(batch.message_ids),
                )
                return
            if error is None:
                continue
            if len(part.ops) > 1 and not transient:
                half = len(part.ops) // 2
                stack.append(_Part(part.ops[half:], part.attempts, part.first_failure))
                stack.append(_Part(part.ops[:half], part.attempts, part.first_failure))
                continue
            self._dead_letter(batch, part, error, transient)

    def _apply_with_retry(self, part: _Part, batch: Batch) -> tuple[str | None, bool]:
        s = self._settings
        started = time.monotonic()
        ops = [op for op, _ in part.ops]
        for attempt in range(1, s.retry_tries + 1):
            part.attempts += 1
            try:
                outcomes = self.store().commit(ops)
            except TRANSIENT as exc:
                metrics.STORE_ERRORS.labels(self.backend, type(exc).__name__).inc()
                error = f"{type(exc).__name__}: {exc}"
                part.first_failure = part.first_failure or time.time()
                left = s.retry_max_s - (time.monotonic() - started)
                delay = min(backoff(attempt, s.retry_tries, s.retry_max_s), left)
                if attempt == s.retry_tries or delay <= 0:
                    if isinstance(exc, StoreUnavailableError):
                        raise
                    return f"gave up after {attempt} tries: {error}", True
                metrics.RETRIES.labels(type(exc).__name__).inc()
                # One line, no traceback: an outage must not flood the log.
                log.warning(
                    "transient failure applying %d ops (try %d/%d), retrying in %.2fs: %s",
                    len(ops),
                    attempt,
                    s.retry_tries,
                    delay,
                    error.split("\n", 1)[0][:300],
                )
                self._sleep(delay)
            except Exception as exc:
                # Anything else is this op's (or this code's) fault: retrying will not help.
                metrics.STORE_ERRORS.labels(self.backend, type(exc).__name__).inc()
                part.first_failure = part.first_failure or time.time()
                return f"{type(exc).__name__}: {exc}", False
            else:
                # Counted once settled, if this settle is the message's first: see
                # worker.metrics.
                batch.committed.append((part.ops, outcomes, time.time()))
                return None, False
        raise AssertionError("unreachable")

    def _dead_letter(self, batch: Batch, part: _Part, error: str, transient: bool) -> None:
        now = time.time()
        first = part.first_failure or now
        batch.failed_ops += len(part.ops)
        reason = "transient" if transient else "permanent"
        for op, mid in part.ops:
            batch.dead_reasons.append((mid, reason))
            key, record = deadletters.op_record(
                op.model_dump(mode="json"),
                error,
                part.attempts,
                first,
                now,
                mid,
                batch.traces.get(op.id),
            )
            batch.dead.append((key, record, now))
        log.error(
            "dead-lettered %d op(s) after %d attempt(s) (%s): %s; op ids: %s",
            len(part.ops),
            part.attempts,
            "transient" if transient else "permanent",
            # The first line only: PostgreSQL's DETAIL line can quote the row, i.e. payload.
            error.split("\n", 1)[0][:300],
            ", ".join(op.id for op, _ in part.ops[:20]),
            extra={"op_ids": [op.id for op, _ in part.ops[:20]], "batch_ops": len(part.ops)},
        )

    def _confirm(self, batch: Batch) -> None:
        """Record dead letters and mark the messages done, atomically, retrying a while;
        then count what the messages this settle was the first for hold."""
        started = time.monotonic()
        applied = Counter(map(itemgetter(1), chain.from_iterable(c[0] for c in batch.committed)))
        counts = tallies.tally(self.backend, batch.committed, batch.published, batch.dead_reasons)
        pushed = None
        if self._tally_list is not None and counts:
            pushed = (self._tally_list, counts.to_json(), tallies.LIST_TTL_S)
        for attempt in range(1, 100):
            try:
                first = deadletters.settle(
                    self._redis,
                    batch.message_ids,
                    batch.dead,
                    applied=applied,
                    confirm_ttl_s=self._settings.confirm_ttl_s,
                    tally=pushed,
                )
                if first is not None:  # some were settled before: count the others
                    counts = tallies.tally(
                        self.backend,
                        batch.committed,
                        batch.published,
                        batch.dead_reasons,
                        first,
                    )
                elif pushed is not None:
                    return  # the settle handed the counts to the main process
                # Counted here, after the settle: a process killed in between leaves these
                # uncounted (worker.tallies).
                tallies.add(counts)
                return
            except TRANSIENT as exc:
                if time.monotonic() - started > self._settings.retry_max_s:
                    # Unconfirmed messages stay pending: the reaper republishes them and
                    # they are applied again, which is harmless.
                    log.error("could not confirm %d messages: %s", len(batch.message_ids), exc)
                    return
                self._sleep(min(0.05 * 2**attempt, 2.0))
