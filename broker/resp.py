"""The publisher's side of the Redis protocol: commands packed in RESP, and one round trip on
a connection of redis-py's own classes without its per-call layers.

A durable save is one EVALSHA round trip, and redis-py's machinery around the socket cost
about as much client CPU as the rest of the save: `pack_commands` ~6 us, and
`send_packed_command` + `read_response` several more (a health check, an error text
formatted in advance on every read, a buffer object five calls deep) over the socket's own
`sendall` and `recv`. What those do besides is done here too: a failed send or read drops
the connection (a reply left unread would answer the next publish), socket errors become
redis-py's, error replies redis-py's exceptions, and the health check runs when due.
Connections of other classes (fakeredis's) go through their own methods.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import redis
from redis._parsers.base import BaseParser
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
        sock = conn._sock
        read = Reader(sock, sock.recv(65536)).replies(n)
    except BaseException as exc:
        raise _dropped(conn, exc, "reading from") from exc
    conn.next_health_check = time.monotonic() + conn.health_check_interval
    return read


class Reader:
    """RESP replies read straight off a socket: the kinds the publisher's commands get
    (integers from EVALSHA and WAIT, SCRIPT LOAD's bulk string, errors). redis-py's parser
    costs ~3 us a reply (a buffer object, five calls deep) where the usual `:1` is one
    `recv`. Anything else, or anything after the replies asked for, is a protocol error
    (`redis.ConnectionError`): the connection is dropped, and the publish retried.
    """

    def __init__(self, sock: socket.socket, data: bytes = b"") -> None:
        self._sock = sock
        self._buf = data  # what was received already

    def replies(self, n: int) -> list[Any]:
        data = self._buf or self._recv()
        while (read := parse(data, n)) is None:
            data += self._recv()
        return read

    def _recv(self) -> bytes:
        data = self._sock.recv(65536)
        if not data:
            raise redis.ConnectionError("the broker closed the connection")
        return data


def parse(data: bytes, n: int) -> list[Any] | None:
    """The `n` replies `data` holds (as `Reader` reads them), or None while it holds only
    part of them; raises `redis.ConnectionError` for anything unexpected or anything more.
    The socket's reading is the caller's: blocking (`Reader`) or asyncio's."""
    if n == 1 and data[:1] == b":" and data.find(b"\r\n") == len(data) - 2:
        return [int(data[1:-2])]  # the usual reply, at once
    cursor = _Cursor(data)
    try:
        read = [cursor.reply() for _ in range(n)]
    except _Incomplete:
        return None
    if cursor.pos != len(data):
        raise redis.ConnectionError("the broker sent more than the replies expected")
    return read


class _Incomplete(Exception):
    """The replies are not all received yet."""


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self._buf = data
        self.pos = 0

    def _line(self) -> bytes:
        end = self._buf.find(b"\r\n", self.pos)
        if end < 0:
            raise _Incomplete
        line, self.pos = self._buf[self.pos : end], end + 2
        return line

    def _exactly(self, size: int) -> bytes:
        if len(self._buf) < self.pos + size + 2:
            raise _Incomplete
        data, self.pos = self._buf[self.pos : self.pos + size], self.pos + size + 2
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"$":
            return None if rest == b"-1" else self._exactly(int(rest))
        if kind == b"_":
            return None
        if kind == b"-":
            return _error(rest)
        if kind == b"!":
            return _error(self._exactly(int(rest)))
        raise redis.ConnectionError(f"unexpected reply from the broker: {line[:40]!r}")


def _error(text: bytes) -> redis.ResponseError:
    """redis-py's exception for an error reply (`NOSCRIPT` -> `NoScriptError`, ...)."""
    return BaseParser.parse_error(text.decode(errors="replace"))  # type: ignore[no-any-return,no-untyped-call]


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
