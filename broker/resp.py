"""The publisher's side of the Redis protocol: commands packed in RESP, and one round trip on
a connection of redis-py's own classes without its per-call layers.

A durable save is one EVALSHA round trip, and redis-py's machinery around the socket cost
about as much client CPU as the rest of the save: `pack_commands` ~6 us, and
`send_packed_command` + `read_response` ~4 us more (a health check, an error text formatted
in advance on every read, nested try blocks) over the socket's own `sendall` and the
parser's `read_response`. What those do besides is done here too: a failed send or read
drops the connection (a reply left unread would answer the next publish), socket errors
become redis-py's, and the health check runs when due.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import redis
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack(*args: str | int | bytes) -> bytes:
    """One command in RESP, byte for byte as redis-py's `pack_command` writes it."""
    parts = [bulk(arg if type(arg) is bytes else str(arg).encode()) for arg in args]
    return b"*%d\r\n%s" % (len(parts), b"".join(parts))


# Connection classes whose send and read are redis-py's own: a subclass that overrides them
# (fakeredis's, say) keeps going through its methods.
_DIRECT = frozenset(
    {
        redis.Connection,
        redis.SSLConnection,
        redis.UnixDomainSocketConnection,
        # Their own `read_response` only turns READONLY into a connection error, which
        # `broker.publisher.PublishRound` does for every connection.
        SentinelManagedConnection,
        SentinelManagedSSLConnection,
    }
)


def send(conn: Any, commands: bytes) -> None:
    """Write packed `commands` on a connected `conn`; on failure (none of them ran: Redis
    drops an incomplete command) raise `redis.ConnectionError` or `redis.TimeoutError`,
    the connection dropped."""
    if type(conn) not in _DIRECT:
        conn.send_packed_command([commands])
        return
    conn.check_health()  # a PING once idle for `health_check_interval`
    try:
        conn._sock.sendall(commands)
    except BaseException as exc:
        raise _dropped(conn, exc, "writing to") from exc


def replies(conn: Any, n: int) -> list[Any]:
    """The next `n` replies on `conn`, error replies returned (not raised) so every pipelined
    reply is read; raises as `send`."""
    if type(conn) not in _DIRECT:
        return [_read_generic(conn) for _ in range(n)]
    try:
        read = [conn._parser.read_response() for _ in range(n)]
    except BaseException as exc:
        raise _dropped(conn, exc, "reading from") from exc
    conn.next_health_check = time.monotonic() + conn.health_check_interval
    return read


def _read_generic(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


def _dropped(conn: Any, exc: BaseException, doing: str) -> BaseException:
    conn.disconnect()
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return exc
    if isinstance(exc, socket.timeout):
        return redis.TimeoutError(f"Timeout {doing} the broker")
    if isinstance(exc, OSError):
        return redis.ConnectionError(f"Error {doing} the broker: {exc}")
    return exc  # KeyboardInterrupt and the like, raised as they are
