"""The asyncio side of the queue protocol: the same atomic Lua publish and the same `wait()`
as `Publisher` and `Tracker`, through redis-py's `redis.asyncio`, never blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from broker import keys
from broker import sentinel as sentinel_urls
from broker.connection import pool_options
from broker.publisher import (
    Attempts,
    PublishRound,
    Sent,
    all_pending,
    check_options,
    publish_command,
)
from broker.sentinel import SentinelOptions
from storage.config import mask_url

from . import aio_resp
from .tracker import Status, Tracked

# Connections one `AsyncProducer` opens at most: a thousand concurrent saves queue for one
# instead of opening a thousand sockets.
MAX_CONNECTIONS = 32


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The current primary's connections, as many as `BlockingConnectionPool` allows."""


def connect_async(
    url: str, timeout: float, sentinel: SentinelOptions | None = None
) -> aioredis.Redis:
    """`broker.connection.connect()` for asyncio: its own bounded pool, every socket operation (and
    the wait for a free connection) bounded by `timeout`; Sentinel URLs as there."""
    options = {
        "retry": Retry(NoBackoff(), 0),
        "max_connections": MAX_CONNECTIONS,
        "timeout": timeout,
        **pool_options(timeout),
    }
    if sentinel_urls.is_sentinel_url(url):
        target = sentinel_urls.parse(url, sentinel or sentinel_urls.options_from_environment())
        kwargs = {**target.sentinel_kwargs(options), "retry": Retry(NoBackoff(), 0)}
        manager = Sentinel(target.sentinels, sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
        pool: aioredis.ConnectionPool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
            target.options.master, manager, **target.server_kwargs(), **options
        )
    else:
        pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return aioredis.Redis(connection_pool=pool)


class AsyncPublisher:
    """`Publisher` for asyncio: queues messages atomically or raises `PublishError`."""

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
        # Half the budget per attempt, as `Publisher`; connects on first use.
        self.redis = connect_async(broker_url, timeout / 2, sentinel)
        # Publishes take connections from a free list of our own, as `Publisher` does:
        # redis-py's asyncio get_connection/release (a health check with a syscall, locks)
        # measured ~145 us per publish under load, more than the rest of the publish.
        self._idle: list[Any] = []
        self._slots: asyncio.Semaphore | None = None  # made on the loop that first publishes

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """As `Publisher.publish`. Cancelling it may leave the messages published or not:
        callers that must know run it shielded (`AsyncProducer` does)."""
        command = publish_command(messages)
        attempts = Attempts(self.masked_url, self._timeout)
        while True:
            sent = False
            try:
                await self._evalsha(PublishRound(command, self._replicas, attempts))
                return
            except Sent as exc:
                sent, cause = True, exc.cause
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                cause = exc
            except redis.ResponseError as exc:
                raise attempts.refused(exc) from None
            if sent and not self._replicas and await self._landed(messages):
                return
            await asyncio.sleep(attempts.failed(cause, sent))

    async def _evalsha(self, round_: PublishRound) -> None:
        """Raises `Sent` if the publish failed after Redis received it whole."""
        conn = await self._acquire()
        sent = False
        try:
            if not conn.is_connected:
                # Explicitly: a Sentinel-managed connection finds the primary only in
                # `connect()` (sending on an unconnected one would connect to its default
                # host instead).
                await conn.connect()
            commands = round_.commands()
            while commands:
                await aio_resp.send(conn, commands[0] if len(commands) == 1 else b"".join(commands))
                sent = True
                commands = round_.answered(await aio_resp.replies(conn, len(commands)))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The reply may still be on its way: this socket must never be reused.
            await conn.disconnect()
            # A send that failed part way never ran: Redis drops an incomplete command.
            if sent:
                raise Sent(exc) from exc
            raise
        except asyncio.CancelledError:
            await conn.disconnect(nowait=True)  # an unread reply would answer the next caller
            raise
        finally:
            self._idle.append(conn)
            assert self._slots is not None
            self._slots.release()

    async def _acquire(self) -> Any:
        """A free connection, at most `MAX_CONNECTIONS` in use; waits for one up to half the
        timeout, then raises `redis.ConnectionError` (retried like a failed connect)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._timeout / 2):
                    await self._slots.acquire()
            except TimeoutError:
                raise redis.ConnectionError("no free broker connection in time") from None
        else:
            await self._slots.acquire()  # free: returns without suspending
        if self._idle:
            return self._idle.pop()
        # Connects on first use; a connection that failed was disconnected and reconnects.
        return self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]

    async def _landed(self, messages: Sequence[tuple[str, bytes]]) -> bool:
        try:
            scores = await self.redis.zmscore(keys.PENDING_KEY, [mid for mid, _ in messages])
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return all_pending(scores)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


class AsyncTracker(Tracked):
    """`Tracker` over an asyncio Redis client: `add` and `wait` are coroutines."""

    def __init__(self, client: aioredis.Redis, max_tracked: int = 100_000) -> None:
        super().__init__(max_tracked)
        self._redis = client

    async def add(self, op_ids: Iterable[str], message_id: str) -> None:
        # Recorded before the first await: from here on `wait()` covers the ops.
        sweep = self._record(op_ids, message_id)
        if sweep is None:
            return
        if sweep:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                await self._check(sweep)
        self._forget_excess()

    async def _check(self, items: list[tuple[str, str]], *, hurry: bool = False) -> Status:
        pipe = self._redis.pipeline(transaction=True)
        message_ids = self._query(pipe, items, hurry=hurry)
        replies: list[Any] = await pipe.execute()
        return self._classify(items, message_ids, replies)

    async def wait(self, op_ids: Iterable[str] | None, timeout: float) -> None:
        waiting = self._waiting(op_ids, timeout)
        while True:
            try:
                statuses: list[Status] | Exception = [
                    await self._check(chunk, hurry=True) for chunk in waiting.chunks()
                ]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                statuses = exc
            delay = waiting.checked(statuses)
            if delay is None:
                return
            await asyncio.sleep(delay)
