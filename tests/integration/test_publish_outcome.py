"""A publish whose answer is lost is never reported as not published when it landed."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from agentstore_cli.launch import RedisServer, free_port
from broker import keys
from producer import Producer, PublishError
from tests.queued import op_id_of


class ReplyEater:
    """A TCP proxy to Redis that forwards every request but swallows the replies on a
    connection once it has sent one of `commands` (the first such connection only, unless
    `every`): the request runs, its answer never arrives."""

    def __init__(self, target_port: int, commands: tuple[bytes, ...], every: bool) -> None:
        self._target = target_port
        self._commands = commands
        self._every = every
        self._muted_once = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target))
                muted = threading.Event()
                with self._lock:
                    self._sockets += [client, upstream]
                for args in ((client, upstream, muted, True), (upstream, client, muted, False)):
                    thread = threading.Thread(target=self._pump, args=args, daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, muted: threading.Event, request: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                if request and any(c in chunk for c in self._commands):
                    with self._lock:
                        if self._every or not self._muted_once:
                            self._muted_once = True
                            muted.set()
                if request or not muted.is_set():
                    dst.sendall(chunk)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def eater(
    broker: str, redis_server: RedisServer, request: pytest.FixtureRequest
) -> Iterator[ReplyEater]:
    commands, every = request.param
    # Redis knows the publish script from then on: the first publish runs it at once.
    with Producer(broker_url=broker) as warm:
        warm.save_state("warm", "up", {})
    redis.Redis.from_url(broker).flushall()
    proxy = ReplyEater(redis_server.port, commands, every)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize("eater", [((b"EVALSHA",), False)], indirect=True)
def test_a_publish_that_landed_without_an_answer_is_a_success(
    eater: ReplyEater, broker: str
) -> None:
    client = redis.Redis.from_url(broker)
    with Producer(broker_url=eater.url, publish_timeout=2) as prod:
        op_id = op_id_of(prod.save_state("a", "s", {"x": 1}))
    assert [m for m in client.zrange(keys.PENDING_KEY, 0, -1)] == [op_id.encode()]
    assert client.llen(keys.QUEUE) == 1, "published once, not again"


@pytest.mark.parametrize("eater", [((b"EVALSHA", b"ZMSCORE"), True)], indirect=True)
def test_an_unknown_outcome_says_the_op_may_have_been_published(
    eater: ReplyEater, broker: str
) -> None:
    with (
        Producer(broker_url=eater.url, publish_timeout=2) as prod,
        pytest.raises(PublishError, match="may have been published") as caught,
    ):
        prod.save_state("a", "s", {"x": 1})
    assert caught.value.may_be_published
    assert redis.Redis.from_url(broker).zcard(keys.PENDING_KEY) == 1, "it had landed"


def test_a_refused_connection_says_nothing_was_published() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with (
        Producer(broker_url=url, publish_timeout=2) as prod,
        pytest.raises(PublishError, match="nothing was published") as caught,
    ):
        prod.save_state("a", "s", {"x": 1})
    assert not caught.value.may_be_published
