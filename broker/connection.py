"""The one way the queue's users connect to Redis."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(url: str, timeout: float) -> redis.Redis:
    """A client on its own pool whose every socket operation gives up after `timeout` s.

    redis-py's own retries are off: callers decide, within their own deadlines.
    """
    pool = redis.ConnectionPool.from_url(url, retry=Retry(NoBackoff(), 0), **pool_options(timeout))
    return redis.Redis(connection_pool=pool)


def pool_options(timeout: float) -> dict[str, Any]:
    """What `connect()` and its asyncio twin set on their pools, besides a retry policy."""
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
