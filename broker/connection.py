"""The one way the queue's users connect to Redis."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(url: str, timeout: float) -> redis.Redis:
    """A client on its own pool whose every socket operation gives up after `timeout` s.

    redis-py's own retries are off: callers decide, within their own deadlines.
    """
    pool = redis.ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
