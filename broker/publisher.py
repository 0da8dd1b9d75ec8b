"""Durable publishing: one Redis round trip queues a message and records it for recovery."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any

import redis

from storage import forks
from storage.config import mask_url

from . import keys, resp, scripts
from .connection import connect
from .errors import PublishError
from .resp import pack
from .sentinel import SentinelOptions

# The publish itself is `publish.lua`, one atomic script; `PUBLISH_SHA` is what EVALSHA names.
PUBLISH_SCRIPT = scripts.load("publish")
PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
PUBLISH_KEYS = [keys.SEQ_KEY, keys.QUEUE, keys.PENDING_KEY, keys.MESSAGES_KEY]


class Publisher:
    """Pushes ready-made messages onto the queue; raises `PublishError` within `timeout` s.

    With `replicas` > 0 a publish returns only once that many replicas have it (Redis
    `WAIT`, sent in the same round trip as the publish script).
    """

    def __init__(
        self,
        broker_url: str,
        timeout: float = 5.0,
        *,
        replicas: int = 0,
        sentinel: SentinelOptions | None = None,
    ) -> None:
        check_options(timeout, replicas)
        self.masked_url = mask_url(broker_url)
        self._timeout = timeout
        self._replicas = replicas
        # Half the budget per attempt, and a retry only while half is left: a publish that
        # fails fast (reset connection) retries, one that hangs gives up in time.
        self.redis = connect(broker_url, timeout / 2, sentinel)
        self._pool = self.redis.connection_pool
        # Our own free lists of the pool's connections: redis-py's get_connection/release
        # (locks, metrics, a can_read syscall) cost ~8 us, a tenth of a durable save, and
        # even its `connect()` of a connected one ~1 us. `_idle`: connected, and fine at
        # their last use; `_spare`: to connect first. (A list's append and pop are atomic.)
        self._idle: list[Any] = []
        self._spare: list[Any] = []
        forks.watch(self)

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Queue `(message id, message)` pairs atomically, or raise `PublishError`.

        A publish whose answer was lost is looked up in `pending` before anything else: if
        it landed, it is a success. Otherwise it is retried (safe: the worker applies a
        message id's ops idempotently), and the error says whether it may have landed.
        (With `replicas`, a lost answer is always retried: only a `WAIT` on the connection
        that wrote it can tell whether the replicas have it.)
        """
        command = publish_command(messages)
        attempts = Attempts(self.masked_url, self._timeout)
        while True:
            sent = False
            try:
                self._evalsha(command, attempts)
                return
            except Sent as exc:
                sent, cause = True, exc.cause
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                cause = exc
            except redis.ResponseError as exc:
                raise attempts.refused(exc) from None
            if sent and not self._replicas and self._landed(messages):
                return
            time.sleep(attempts.failed(cause, sent))

    def _evalsha(self, command: bytes, attempts: Attempts) -> None:
        """Raises `Sent` if the publish failed after Redis received it whole."""
        # Straight on a connection of our own free list: the client's per-command machinery
        # (retries, observability hooks) costs as much as the round trip itself.
        conn, connected = _pop(self._idle), True
        if conn is None:
            conn, connected = _pop(self._spare) or self._pool.make_connection(), False
        ok = sent = False
        try:
            if not connected:
                # Sending would connect too, but straight to the URL's host: a
                # Sentinel-managed connection finds the primary only in `connect()`.
                conn.connect()
            # The usual publish (no replicas to wait for, the script known) is one EVALSHA
            # answered by a number; anything else is a `PublishRound`'s to handle.
            round_ = PublishRound(command, self._replicas, attempts) if self._replicas else None
            commands = [command] if round_ is None else round_.commands()
            while commands:
                resp.send(conn, commands[0] if len(commands) == 1 else b"".join(commands))
                sent = True
                replies = resp.replies(conn, len(commands))
                if round_ is None:
                    if type(replies[0]) is int:
                        break
                    round_ = PublishRound(command, 0, attempts)
                commands = round_.answered(replies)
            ok = True
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The reply may still be on its way: this socket must never be reused.
            conn.disconnect()
            # A send that failed part way never ran: Redis drops an incomplete command.
            if sent:
                raise Sent(exc) from exc
            raise
        finally:
            # A connection that failed in any way (disconnected, or an error reply read
            # whole) connects again when next used: through Sentinel, to the primary then.
            (self._idle if ok else self._spare).append(conn)

    def _landed(self, messages: Sequence[tuple[str, bytes]]) -> bool:
        """Whether a publish whose answer was lost is in `pending` (all or none: one script)."""
        try:
            scores = self.redis.zmscore(keys.PENDING_KEY, [mid for mid, _ in messages])
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return all_pending(scores)

    def _after_fork_in_child(self) -> None:
        # The parent's sockets stay the parent's.
        self._idle, self._spare = [], []

    def close(self) -> None:
        held, self._idle, self._spare = self._idle + self._spare, [], []
        for conn in held:
            conn.disconnect()
        self.redis.close()
        self.redis.connection_pool.disconnect()


def _pop(connections: list[Any]) -> Any:
    try:
        return connections.pop()
    except IndexError:
        return None


def check_options(timeout: float, replicas: int) -> None:
    """Refuses what neither publisher (sync or asyncio) can honour."""
    if timeout <= 0:
        raise ValueError("publish timeout must be positive")
    if replicas < 0:
        raise ValueError("replicas must not be negative")


def publish_command(messages: Sequence[tuple[str, bytes]]) -> bytes:
    """The publish script's EVALSHA, packed in RESP: its ARGV is message id, message,
    message id, message, ... Copied once: a buffered publish carries megabytes."""
    parts = [b"*%d\r\n" % (len(_EVALSHA_ARGS) + 2 * len(messages)), _EVALSHA_HEAD]
    for message_id, message in messages:
        mid = message_id.encode()
        parts += (b"$%d\r\n%s\r\n$%d\r\n" % (len(mid), mid, len(message)), message, b"\r\n")
    return b"".join(parts)


# EVALSHA <sha> <number of keys> <keys...>, then ARGV (two per message): all but the ARGV
# is the same in every publish, so it is packed once.
_EVALSHA_ARGS: tuple[str | int, ...] = ("EVALSHA", PUBLISH_SHA, len(PUBLISH_KEYS), *PUBLISH_KEYS)
_EVALSHA_HEAD = pack(*_EVALSHA_ARGS).partition(b"\r\n")[2]
_LOAD = pack("SCRIPT", "LOAD", PUBLISH_SCRIPT)


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

    def wait_ms(self) -> int:
        """A `WAIT` timeout: what is left of the whole budget, within one socket timeout."""
        left = min(self._timeout - (time.monotonic() - self._start), self._timeout / 2 * 0.8)
        return max(1, int(left * 1000))  # WAIT 0 would block forever

    def out_of_time(self) -> bool:
        return time.monotonic() - self._start >= self._timeout * 0.9

    def unreplicated(self, acks: int, replicas: int) -> PublishError:
        return PublishError(
            f"published to the primary at {self._url}, but only {acks} of the "
            f"{replicas} replica(s) AGENTSTORE_PUBLISH_REPLICAS asks for acknowledged it "
            f"within {self._timeout:g}s; it may still be applied (a primary failure now may "
            "also lose it)",
            may_be_published=True,
        )

    def refused(self, exc: redis.ResponseError) -> PublishError:
        return PublishError(f"the broker at {self._url} refused the publish: {_reason(exc)}")


class PublishRound:
    """The commands of one publish attempt and what their replies mean, for the blocking
    and the asyncio publisher alike (which only do the I/O): the script (loaded first if
    Redis lacks it), then `WAIT` for the replicas in the same round trip, then more `WAIT`s
    on the same connection (WAIT covers the connection's own writes) until the replicas
    have it or the time is up."""

    def __init__(self, evalsha: bytes, replicas: int, attempts: Attempts) -> None:
        self._evalsha = evalsha  # `publish_command`
        self._replicas = replicas
        self._attempts = attempts
        self._waiting = False  # the last commands sent were a lone follow-up WAIT

    def commands(self, load: bool = False) -> list[bytes]:
        """The commands to send, each packed in RESP (`pack`)."""
        self._waiting = False
        commands = [_LOAD, self._evalsha] if load else [self._evalsha]
        if self._replicas:
            commands.append(pack("WAIT", self._replicas, self._attempts.wait_ms()))
        return commands

    def answered(self, replies: list[Any]) -> list[bytes]:
        """The next commands to send (none: published), from the replies to the last ones;
        raises a `redis.ResponseError` the broker answered, or `PublishError`."""
        for reply in replies:
            if isinstance(reply, redis.exceptions.NoScriptError):
                return self.commands(load=True)
            if isinstance(reply, redis.exceptions.ReadOnlyError):
                # A demoted primary: a connection error, so the connection is dropped and
                # the next one asks the Sentinels where the primary is now.
                raise redis.ConnectionError(f"the server is a replica now: {reply}")
            if isinstance(reply, redis.ResponseError):
                raise reply
        if not (self._waiting or self._replicas):
            return []
        # The last reply is WAIT's: how many replicas have every write of this connection.
        return self._acknowledged(int(replies[-1]))

    def _acknowledged(self, acks: int) -> list[bytes]:
        if acks >= self._replicas:
            return []
        if self._attempts.out_of_time():
            raise self._attempts.unreplicated(acks, self._replicas)
        self._waiting = True
        return [pack("WAIT", self._replicas, self._attempts.wait_ms())]


class Sent(Exception):
    """A publish failed after Redis had the whole request: it may have run."""

    def __init__(self, cause: redis.RedisError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _reason(exc: Exception) -> str:
    # redis-py error texts name host and port but never the password; keep them short anyway.
    # No Sentinel answering names each one by its client's repr: its error is what matters.
    text = _SENTINEL_REPR.sub("", str(exc))
    return f"{type(exc).__name__}: {text[:300]}"


_SENTINEL_REPR = re.compile(r"<redis\.(?:asyncio\.)?client\.Redis\(.*?\)> - ")
