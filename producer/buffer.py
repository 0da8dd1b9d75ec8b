"""Buffered publishing: saves return at once; a background thread publishes them in batches.

Ops wait in memory for at most `linger` seconds (or until `max_batch` of them are ready) and
then go out as one task message per `max_batch` ops, several messages per Lua publish, so
recovery and `Producer.wait()` work exactly as for single saves. What a crash can lose is
what is still in memory: see docs/GUARANTEES.md.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable

from broker import wire
from broker.errors import PublishError
from broker.tracing import Carrier
from broker.wire import MAX_MESSAGE_CHARS, Batch

from .errors import BufferFullError

log = logging.getLogger(__name__)

# One Lua publish carries at most this many messages / characters: the round trip is
# amortised, and Redis is never blocked for long by one script.
MAX_MESSAGES_PER_PUBLISH = 8
MAX_PUBLISH_CHARS = 8_000_000
_BACKOFF_MAX_S = 2.0


class SendBuffer:
    """Ops (op id, op JSON text) waiting to be published, and the thread that publishes them.

    `publish` is called with whole batches from the sender thread only; it raises
    `PublishError` when the broker did not take them, and the batch is then retried, with
    the same message ids, after a backoff. Ops are published in the order they were added.
    """

    def __init__(
        self,
        publish: Callable[[Batch], None],
        *,
        linger_s: float,
        max_batch: int,
        max_buffer: int,
        buffer_timeout: float,
    ) -> None:
        if linger_s <= 0:
            raise ValueError("linger must be positive")
        if max_batch < 1 or max_buffer < max_batch:
            raise ValueError("need 1 <= max_batch <= max_buffer")
        if buffer_timeout < 0:
            raise ValueError("buffer_timeout must not be negative")
        self._publish = publish
        self._linger = linger_s
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._buffer_timeout = buffer_timeout
        self._reset()

    def _reset(self) -> None:
        """Empty, with fresh locks and no thread: at creation, and in a forked child."""
        self._lock = threading.Lock()
        # One condition for everything: added ops, flush requests, published ops, space.
        self._cond = threading.Condition(self._lock)
        self._queue = OpQueue()
        self._added = 0  # ops ever accepted
        self._sent = 0  # ops ever published (in order, so `_sent >= n` covers the first n)
        self._retry: Batch | None = None  # a batch the broker has not taken yet
        self._retry_ops = 0
        self._flush_to = 0  # publish without lingering until `_sent` reaches this
        self._error: PublishError | None = None  # the last failure, until a publish succeeds
        self._failures = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def after_fork_in_child(self) -> None:
        # The parent's ops are the parent's to send: the child starts empty, with its own
        # thread (started on its first save) and locks that no parent thread can hold.
        self._reset()

    def __len__(self) -> int:
        """Ops accepted and not yet published."""
        return self._added - self._sent

    @property
    def error(self) -> PublishError | None:
        """The last publish failure, while the buffer has not drained since."""
        return self._error

    # -- the caller's side -------------------------------------------------------------

    def add(self, op_id: str, text: str, trace: Carrier | None = None) -> None:
        """Queue one op; blocks while the buffer is full, up to `buffer_timeout` seconds."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("Producer is closed")
            if self._added - self._sent >= self._max_buffer:
                self._wait_for_space()
            n = self._queue.add(op_id, text, trace)
            self._added += 1
            if self._thread is None:
                self._start()
            elif n == 1 or n == self._max_batch or self._queue.size > MAX_MESSAGE_CHARS:
                # The first op starts the linger clock; a full batch goes out at once.
                self._cond.notify_all()

    def _wait_for_space(self) -> None:
        deadline = time.monotonic() + self._buffer_timeout
        while self._added - self._sent >= self._max_buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                raise buffer_full(self._max_buffer, self._buffer_timeout, self._error)
            self._cond.wait(remaining)

    def flush(self, timeout: float) -> None:
        """Publish everything added so far; raise `PublishError` if not done in `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._added
            if self._sent >= target:
                return
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while self._sent < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    raise not_flushed(target - self._sent, timeout, self._error)
                self._cond.wait(remaining)

    def stop(self, timeout: float) -> int:
        """Flush for up to `timeout` s, then stop the thread; returns the ops left unsent."""
        with contextlib.suppress(PublishError):
            self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, timeout))
        return len(self)

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="agentstore-publisher", daemon=True)
        self._thread = thread
        thread.start()

    # -- the sender thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                taken = self._take()
                if taken is None:
                    return
            if taken:
                # Built outside the lock, so saves never wait for it; kept as built, so a
                # retry republishes the same message ids.
                ids, texts, traces = taken
                self._retry = wire.build_messages(ids, texts, self._max_batch, traces)
            batch = self._retry
            assert batch is not None
            try:
                self._publish(batch)
            except PublishError as exc:
                self._failed(batch, exc)
                continue
            except Exception as exc:  # a bug or an unexpected client error: never die on it
                log.exception("publishing buffered ops failed unexpectedly")
                self._failed(batch, PublishError(f"unexpected error while publishing: {exc!r}"))
                continue
            with self._lock:
                self._retry = None
                self._sent += sum(len(ids) for _, _, ids in batch)
                if self._error is not None:
                    log.warning("buffered publishing recovered after %d failure(s)", self._failures)
                self._error, self._failures = None, 0
                self._cond.notify_all()

    def _take(
        self,
    ) -> tuple[list[str], list[str], list[Carrier | None]] | tuple[()] | None:
        """Under the lock: the ops to publish next, after lingering; `()` to retry the last
        batch; None once stopping."""
        if self._stopping:
            return None
        if self._retry is not None:
            return ()
        while not len(self._queue):
            self._cond.wait()
            if self._stopping:
                return None
        deadline = time.monotonic() + self._linger
        while (
            not self._queue.ready(self._max_batch)
            and self._flush_to <= self._sent
            and not self._stopping
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        lingering = (
            time.monotonic() < deadline and self._flush_to <= self._sent and not self._stopping
        )
        return self._queue.take(self._max_batch, lingering)

    def _failed(self, batch: Batch, exc: PublishError) -> None:
        with self._lock:
            self._error = exc
            self._failures += 1
            failures = self._failures
            # Flush and save callers waiting on us learn of the failure now.
            self._cond.notify_all()
        deadline = time.monotonic() + retry_delay(batch, failures, exc)
        with self._lock:
            while not self._stopping and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)


def buffer_full(max_buffer: int, timeout: float, error: PublishError | None) -> BufferFullError:
    cause = f"; the broker keeps failing: {error}" if error else ""
    exc = BufferFullError(
        f"{max_buffer:,} buffered ops not yet published after waiting {timeout:g}s for "
        f"room{cause}. Nothing was buffered for this save; retry it, or raise max_buffer or "
        "buffer_timeout"
    )
    exc.__cause__ = error
    return exc


def not_flushed(left: int, timeout: float, error: PublishError | None) -> PublishError:
    why = f": {error}" if error else " (the broker is slow)"
    exc = PublishError(f"{left:,} buffered op(s) not published within {timeout:g}s{why}")
    exc.__cause__ = error
    return exc


def retry_delay(batch: Batch, failures: int, exc: PublishError) -> float:
    """Seconds before retrying `batch`, which failed `failures` times in a row (logged)."""
    if failures == 1 or failures % 10 == 0:
        ops = sum(len(ids) for _, _, ids in batch)
        log.warning(
            "could not publish %d buffered op(s) (failure %d; kept, retrying): %s",
            ops,
            failures,
            exc,
        )
    return min(0.05 * 2.0 ** min(failures, 10), _BACKOFF_MAX_S) * random.uniform(0.5, 1.0)


class OpQueue:
    """Ops (op id, op JSON text) in the order they were saved, not yet taken to publish."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._traces: list[Carrier | None] = []  # each op's trace context (broker.tracing)
        self.size = 0  # characters in `_texts`

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, op_id: str, text: str, trace: Carrier | None = None) -> int:
        """Append one op; returns how many are queued now."""
        self._ids.append(op_id)
        self._texts.append(text)
        self._traces.append(trace)
        self.size += len(text)
        return len(self._ids)

    def ready(self, max_batch: int) -> bool:
        """Whether a full message is waiting: lingering longer gains nothing."""
        return len(self._ids) >= max_batch or self.size > MAX_MESSAGE_CHARS

    def take(
        self, max_batch: int, lingering: bool
    ) -> tuple[list[str], list[str], list[Carrier | None]]:
        """The ops for one publish, oldest first: at most `MAX_MESSAGES_PER_PUBLISH` messages
        and `MAX_PUBLISH_CHARS` characters; while `lingering`, whole batches only."""
        limit = max_batch * MAX_MESSAGES_PER_PUBLISH
        if lingering and len(self._ids) > max_batch:
            # Woken by a full batch: whole batches go now, the rest keeps lingering (and may
            # fill up too) instead of going out as a small message of its own.
            limit = min(limit, len(self._ids) // max_batch * max_batch)
        if self.size > MAX_PUBLISH_CHARS:  # large payloads: bound one publish's size too
            chars = 0
            for n, text in enumerate(self._texts[:limit]):
                chars += len(text)
                if chars > MAX_PUBLISH_CHARS:
                    limit = max(n, 1)
                    break
        ids, texts, traces = self._ids[:limit], self._texts[:limit], self._traces[:limit]
        if len(ids) == len(self._ids):
            self._ids, self._texts, self._traces, self.size = [], [], [], 0
        else:
            del self._ids[:limit], self._texts[:limit], self._traces[:limit]
            self.size -= sum(map(len, texts))
        return ids, texts, traces
