"""The publisher's own RESP: commands packed as redis-py packs them, replies read off a socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from broker.publisher import PUBLISH_KEYS, PUBLISH_SHA, publish_command
from broker.resp import Reader, pack


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(2.0)
    yield ours, theirs
    ours.close()
    theirs.close()


def _replies(
    pair: tuple[socket.socket, socket.socket], data: bytes, n: int, chunk: int
) -> list[Any]:
    """What `Reader` makes of `data`, written `chunk` bytes at a time by another thread."""
    ours, theirs = pair

    def write() -> None:
        for start in range(0, len(data), chunk):
            theirs.sendall(data[start : start + chunk])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        return Reader(ours).replies(n)
    finally:
        writer.join()


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_replies_are_read_whole_however_they_arrive(
    pair: tuple[socket.socket, socket.socket], chunk: int
) -> None:
    data = b"$40\r\n" + b"a" * 40 + b"\r\n:3\r\n$-1\r\n_\r\n+OK\r\n:-12\r\n$2\r\n\r\n\r\n"
    assert _replies(pair, data, 7, chunk) == [b"a" * 40, 3, None, None, b"OK", -12, b"\r\n"]


@pytest.mark.parametrize("chunk", [1, 1000])
def test_error_replies_are_redis_pys_exceptions_returned(
    pair: tuple[socket.socket, socket.socket], chunk: int
) -> None:
    data = b"-NOSCRIPT No matching script.\r\n!21\r\nREADONLY You can't w.\r\n-ERR x\r\n:1\r\n"
    noscript, readonly, err, one = _replies(pair, data, 4, chunk)
    assert isinstance(noscript, redis.exceptions.NoScriptError)
    assert isinstance(readonly, redis.exceptions.ReadOnlyError)
    assert type(err) is redis.ResponseError and str(err) == "x"
    assert one == 1


@pytest.mark.parametrize(
    ("data", "n"),
    [
        (b":1\r\n:2\r\n", 1),  # more than asked for: the next publish would read it
        (b"*1\r\n:1\r\n", 1),  # a kind our commands never get
        (b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n:1\r\n", 1),  # a RESP3 push
    ],
)
def test_anything_unexpected_is_a_connection_error(
    pair: tuple[socket.socket, socket.socket], data: bytes, n: int
) -> None:
    with pytest.raises(redis.ConnectionError):
        _replies(pair, data, n, 1000)


def test_a_connection_closed_mid_reply_is_a_connection_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"$10\r\nabc")
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(redis.ConnectionError, match="closed"):
        Reader(ours).replies(1)


def test_no_reply_in_time_is_the_sockets_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    ours.settimeout(0.05)
    with pytest.raises(TimeoutError):
        Reader(ours).replies(1)


def _packed_by_redis_py(*args: str | int | bytes) -> bytes:
    return b"".join(redis.Connection().pack_command(*args))  # type: ignore[no-untyped-call]


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    args = ("SET", "clé", b"\x00\r\n*$", 12, "")
    assert pack(*args) == _packed_by_redis_py(*args)
    messages = [("m1", b"caf\xc3\xa9 \r\n$*"), ("m-2", b"")]
    argv = [arg for mid, message in messages for arg in (mid, message)]
    expected = _packed_by_redis_py("EVALSHA", PUBLISH_SHA, len(PUBLISH_KEYS), *PUBLISH_KEYS, *argv)
    assert publish_command(messages) == expected
