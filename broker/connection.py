"""The one way the queue's users connect to Redis: a plain URL, or Sentinels that name the
current primary (`broker.sentinel`)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from . import sentinel as sentinel_urls
from .sentinel import SentinelOptions


def connect(url: str, timeout: float, sentinel: SentinelOptions | None = None) -> redis.Redis:
    """A client on its own pool whose every socket operation gives up after `timeout` s.

    redis-py's own retries are off: callers decide, within their own deadlines. With a
    `sentinel://` URL the client talks to the current primary: a connection that fails (or
    finds its server demoted: READONLY) is dropped, and the next one asks the Sentinels again.
    `sentinel` defaults to the options in the environment.
    """
    options = pool_options(timeout)
    if sentinel_urls.is_sentinel_url(url):
        target = sentinel_urls.parse(url, sentinel or sentinel_urls.options_from_environment())
        # No retries on the Sentinels either (redis-py's default retries with backoff took
        # 15 s to give up on three Sentinels refusing a TLS handshake).
        kwargs = {**target.sentinel_kwargs(options), "retry": Retry(NoBackoff(), 0)}
        manager = Sentinel(target.sentinels, sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
        pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.options.master,
            manager,
            retry=Retry(NoBackoff(), 0),
            **target.server_kwargs(),
            **options,
        )
    else:
        pool = redis.ConnectionPool.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return redis.Redis(connection_pool=pool)


def pool_options(timeout: float) -> dict[str, Any]:
    """What `connect()` and its asyncio twin set on their pools, besides a retry policy."""
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
