"""kombu's Redis transport, fixed so a worker survives losing the broker connection.

kombu 5.7 with Celery 5.7: after a connection loss the consumer detaches the transport
from the connection and then closes (or acks on) a channel of the old connection. That
channel rebuilds its Redis pool from the detached connection's URL and raises
AttributeError, which Celery treats as unrecoverable: the worker exits mid-drain. Raising
a Redis connection error instead lets kombu's own handling (log, ignore, reconnect) work;
the messages involved stay in `pending` and the reaper recovers them.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("this broker connection was already closed")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel
