"""kombu's Redis transport, fixed so a worker survives losing the broker connection.

kombu 5.7 with Celery 5.7: after a connection loss the consumer detaches the transport
from the connection and then closes (or acks on) a channel of the old connection. That
channel rebuilds its Redis pool from the detached connection's URL and raises
AttributeError, which Celery treats as unrecoverable: the worker exits mid-drain. Raising
a Redis connection error instead lets kombu's own handling (log, ignore, reconnect) work;
the messages involved stay in `pending` and the reaper recovers them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from broker import deadletters, wire

from . import tallies

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's bookkeeping, minus its Redis writes while Redis is at `maxmemory`.

    Under `noeviction` they fail with OutOfMemoryError, which Celery treats as unrecoverable:
    every worker died exactly when draining (which frees memory) was needed. Skipping them
    only skips kombu's own redelivery copy; our `pending` record still covers the message.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError:
            log.warning("broker at maxmemory: delivering without kombu's unacked copy")
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError:
            log.warning("broker at maxmemory: kombu's redelivery scan skipped this time")


class Channel(kombu_redis.Channel):
    QoS = QoS
    _popped: bytes | None = None

    def _size(self, queue: str) -> int:
        # kombu reads the lengths in a MULTI, and Redis at `maxmemory` refuses any command
        # inside a MULTI: a worker starting then died. Reads need no transaction.
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))  # type: ignore[no-untyped-call]
            return sum(n for n in pipe.execute() if isinstance(n, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        # The binding (SADD) is refused at `maxmemory`; consuming reads the queue by name and
        # our producers push to it directly, so starting without it loses nothing.
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError:
            log.warning("broker at maxmemory: queue %s consumed without its binding", queue)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("this broker connection was already closed")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
        return params

    # kombu decodes the entry BRPOP returns (JSON, then the envelope) before any Celery hook
    # runs, and an error there stops the worker ("Unrecoverable error"): one hand-pushed
    # non-JSON entry would take a worker down. The entry has left the list by then, so keep
    # its raw bytes and, if it is not one of our messages, dead-letter it and go on. An error
    # with a well-formed message is not the message's fault: it still propagates.

    def _brpop_start(self, timeout: Any = None) -> None:
        self.client.set_response_callback("BRPOP", self._keep_popped)
        super()._brpop_start(timeout)  # type: ignore[no-untyped-call]

    def _keep_popped(self, response: Any, **_: Any) -> tuple[Any, ...] | None:
        self._popped = response[1] if response else None
        return tuple(response) if response else None  # what redis-py's own callback returns

    def _brpop_read(self, **options: Any) -> bool:
        self._popped = None
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, KeyError) as exc:
            raw = self._popped
            if raw is None:
                raise
            try:
                wire.parse_message(raw)
            except wire.MalformedMessage as malformed:
                error = f"{malformed.reason} ({type(exc).__name__}: {exc})"
                self._dead_letter(raw, error[:500], malformed.message_id)
                return True
            raise

    def _dead_letter(self, raw: bytes, reason: str, mid: str | None) -> None:
        now = time.time()
        key, record = deadletters.message_record(raw, reason, mid, now)
        try:
            with self.conn_or_acquire() as client:
                first = deadletters.settle(client, [mid] if mid else [], [(key, record, now)])
            tallies.dead_lettered(mid, "malformed", first)
            log.error("dead-lettered queue entry %s: %s", key, reason)
        except redis.RedisError:
            log.exception("could not dead-letter a queue entry (%s)", reason)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel (above) on kombu's Sentinel channel: connections go to the primary the
    Sentinels name, found again after every connection loss."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """`Transport` for `sentinel://` broker URLs (master name: `transport_options`)."""

    Channel = SentinelChannel
