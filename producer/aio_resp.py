"""`broker.resp` for asyncio: a publish's commands written and its replies read straight on
a `redis.asyncio` connection's streams, without redis-py's per-call layers.

Each `send_packed_command` there runs in `asyncio.wait_for` (a task of its own per write)
and each `read_response` goes through its parser's buffer under a timeout context: together
more client CPU than the rest of an asyncio publish. What they do besides is done here too:
every write and read is bounded by the connection's socket timeout, socket errors become
redis-py's (the caller drops the connection), error replies redis-py's exceptions, and the
health check runs when due. Connections of other classes go through their own methods.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from broker import resp

# As `broker.resp._DIRECT`: the asyncio classes whose send and read are redis-py's own.
_DIRECT = frozenset(
    {
        aioredis.Connection,
        aioredis.SSLConnection,
        aioredis.UnixDomainSocketConnection,
        SentinelManagedConnection,
        SentinelManagedSSLConnection,
    }
)


async def send(conn: Any, commands: bytes) -> None:
    """Write packed `commands` on a connected `conn`; on failure (none of them ran: Redis
    drops an incomplete command) raise `redis.ConnectionError` or `redis.TimeoutError`."""
    if type(conn) not in _DIRECT:
        await conn.send_packed_command([commands])
        return
    if conn.health_check_interval and asyncio.get_running_loop().time() > conn.next_health_check:
        await conn.check_health()  # a PING once idle for `health_check_interval`
    writer = conn._writer
    try:
        if writer.transport.is_closing():
            # A closed transport drops what it is given without a word.
            raise redis.ConnectionError("the connection to the broker is closed")
        writer.write(commands)
        if writer.transport.get_write_buffer_size():
            # Only a write the socket did not take at once can wait (the buffer's limit).
            async with asyncio.timeout(conn.socket_timeout):
                await writer.drain()
    except (OSError, TimeoutError) as exc:
        raise _error(exc, "writing to") from exc


async def replies(conn: Any, n: int) -> list[Any]:
    """The next `n` replies on `conn`, error replies returned (not raised) so every pipelined
    reply is read; raises as `send`."""
    if type(conn) not in _DIRECT:
        return [await _read_generic(conn) for _ in range(n)]
    reader: asyncio.StreamReader = conn._reader
    try:
        async with asyncio.timeout(conn.socket_timeout):
            data = await _recv(reader)
            while (read := resp.parse(data, n)) is None:
                data += await _recv(reader)
    except (OSError, TimeoutError) as exc:
        raise _error(exc, "reading from") from exc
    if conn.health_check_interval:
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    return read


async def _recv(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(65536)
    if not data:
        raise redis.ConnectionError("the broker closed the connection")
    return data


async def _read_generic(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except redis.ResponseError as exc:
        return exc


def _error(exc: BaseException, doing: str) -> redis.RedisError:
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return exc
    if isinstance(exc, TimeoutError):
        return redis.TimeoutError(f"Timeout {doing} the broker")
    return redis.ConnectionError(f"Error {doing} the broker: {exc}")
