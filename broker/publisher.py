"""Durable publishing: one Redis round trip queues a message and records it for recovery."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from storage.config import mask_url

from . import keys, scripts
from .connection import connect
from .errors import PublishError

# The publish itself is `publish.lua`, one atomic script; `PUBLISH_SHA` is what EVALSHA names.
PUBLISH_SCRIPT = scripts.load("publish")
PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
PUBLISH_KEYS = [keys.SEQ_KEY, keys.QUEUE, keys.PENDING_KEY, keys.MESSAGES_KEY]


class Publisher:
    """Pushes ready-made messages onto the queue; raises `PublishError` within `timeout` s."""

    def __init__(self, broker_url: str, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError("publish timeout must be positive")
        self.masked_url = mask_url(broker_url)
        self._timeout = timeout
        # Half the budget per attempt, and a retry only while half is left: a publish that
        # fails fast (reset connection) retries, one that hangs gives up in time.
        self.redis = connect(broker_url, timeout / 2)
        self._pool = self.redis.connection_pool
        self._sha = PUBLISH_SHA
        # Our own free list of the pool's connections: redis-py's get_connection/release
        # (locks, metrics, a can_read syscall) cost ~8 us, a tenth of a durable save.
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()
        self._pid = os.getpid()

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Queue `(message id, message)` pairs atomically, or raise `PublishError`.

        A publish whose answer was lost is looked up in `pending` before anything else: if
        it landed, it is a success. Otherwise it is retried (safe: the worker applies a
        message id's ops idempotently), and the error says whether it may have landed.
        """
        argv = publish_argv(messages)
        attempts = Attempts(self.masked_url, self._timeout)
        while True:
            sent = False
            try:
                self._evalsha(argv)
                return
            except Sent as exc:
                sent, cause = True, exc.cause
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                cause = exc
            except redis.ResponseError as exc:
                raise attempts.refused(exc) from None
            if sent and self._landed(messages):
                return
            time.sleep(attempts.failed(cause, sent))

    def _evalsha(self, argv: list[str | bytes]) -> None:
        """Raises `Sent` if the publish failed after Redis received it whole."""
        # Straight on a pooled connection: the client's per-command machinery (retries,
        # observability hooks) costs as much as the round trip itself.
        conn = self._acquire()
        sent = False
        try:
            try:
                conn.send_command("EVALSHA", self._sha, len(PUBLISH_KEYS), *PUBLISH_KEYS, *argv)
                sent = True
                conn.read_response()
            except redis.exceptions.NoScriptError:
                sent = False
                conn.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)
                conn.read_response()
                conn.send_command("EVALSHA", self._sha, len(PUBLISH_KEYS), *PUBLISH_KEYS, *argv)
                sent = True
                conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The reply may still be on its way: this socket must never be reused.
            conn.disconnect()
            # A send that failed part way never ran: Redis drops an incomplete command.
            if sent:
                raise Sent(exc) from exc
            raise
        finally:
            with self._idle_lock:
                self._idle.append(conn)

    def _landed(self, messages: Sequence[tuple[str, bytes]]) -> bool:
        """Whether a publish whose answer was lost is in `pending` (all or none: one script)."""
        try:
            scores = self.redis.zmscore(keys.PENDING_KEY, [mid for mid, _ in messages])
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return all_pending(scores)

    def _acquire(self) -> Any:
        if self._pid != os.getpid():
            # A forked child: the parent's sockets stay the parent's.
            self._idle, self._idle_lock, self._pid = [], threading.Lock(), os.getpid()
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        # Connects on first use; a connection that failed was disconnected and reconnects.
        return self._pool.make_connection()

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for conn in idle:
                conn.disconnect()
        self.redis.close()
        self.redis.connection_pool.disconnect()


def publish_argv(messages: Sequence[tuple[str, bytes]]) -> list[str | bytes]:
    """The publish script's ARGV: message id, message, message id, message, ..."""
    argv: list[str | bytes] = []
    for message_id, message in messages:
        argv += (message_id, message)
    return argv


def all_pending(scores: Sequence[float | None]) -> bool:
    """Whether a publish whose answer was lost landed, from its messages' `pending` scores."""
    # Already applied and confirmed counts as not found: it is then republished, which the
    # idempotent apply makes harmless.
    return all(score is not None for score in scores)


class Attempts:
    """The retry policy of one publish, shared by the blocking and the asyncio publisher:
    retry while half the timeout is left (at most 5 attempts), then a `PublishError` that
    says whether the op may have been published."""

    def __init__(self, masked_url: str, timeout: float) -> None:
        self._url = masked_url
        self._timeout = timeout
        self._start = time.monotonic()
        self._attempt = 0
        self._unknown = False  # a request may have reached Redis without our seeing its answer

    def failed(self, cause: Exception, sent: bool) -> float:
        """Seconds to back off before the next attempt; raises `PublishError` to give up."""
        self._attempt += 1
        self._unknown = self._unknown or sent
        elapsed = time.monotonic() - self._start
        if elapsed >= self._timeout / 2 or self._attempt >= 5:
            outcome = (
                "it may have been published (a request was sent, its answer lost)"
                if self._unknown
                else "nothing was published"
            )
            raise PublishError(
                f"could not publish to the broker at {self._url} "
                f"after {self._attempt} attempt(s) in {elapsed:.2f}s: {_reason(cause)}; "
                f"{outcome}; check that Redis is running and CELERY_BROKER_URL is right",
                may_be_published=self._unknown,
            ) from None
        return min(0.01 * 2.0**self._attempt, self._timeout / 2 - elapsed)

    def refused(self, exc: redis.ResponseError) -> PublishError:
        return PublishError(f"the broker at {self._url} refused the publish: {_reason(exc)}")


class Sent(Exception):
    """A publish failed after Redis had the whole request: it may have run."""

    def __init__(self, cause: redis.RedisError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _reason(exc: Exception) -> str:
    # redis-py error texts name host and port but never the password; keep them short anyway.
    return f"{type(exc).__name__}: {str(exc)[:200]}"
