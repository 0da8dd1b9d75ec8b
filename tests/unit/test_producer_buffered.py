"""The buffered producer (`linger_ms > 0`) against fakeredis: batching, flush, failures, close."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

import broker.publisher
from broker import keys, wire
from broker.deadletters import settle
from producer import BufferFullError, DeadLetteredError, Producer, PublishError
from storage import ValidationError
from tests.queued import op_id_of, pending_ids

LONG = 60_000.0  # a linger that never ends within a test: only flush/close publish


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    monkeypatch.setattr(broker.publisher, "connect", lambda url, timeout, sentinel=None: client)
    yield client


def _buffered(**kw: Any) -> Producer:
    kw.setdefault("linger_ms", LONG)
    return Producer(broker_url="redis://127.0.0.1:6379/0", **kw)


def _queued(fake: fakeredis.FakeRedis) -> list[wire.Message]:
    return [wire.parse_message(raw) for raw in reversed(fake.lrange(keys.QUEUE, 0, -1))]


class Broker:
    """Makes the producer's publishes fail while `down`, counting attempts."""

    def __init__(self, prod: Producer) -> None:
        self.down = True
        self.attempts = 0
        self.message_ids: list[list[str]] = []
        self._real = prod._publisher.publish

        def publish(messages: Any) -> None:
            self.attempts += 1
            self.message_ids.append([mid for mid, _ in messages])
            if self.down:
                raise PublishError("could not publish to the broker: ConnectionError: refused")
            self._real(messages)

        prod._publisher.publish = publish  # type: ignore[method-assign]


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_saves_return_at_once_and_flush_publishes_them(fake: fakeredis.FakeRedis) -> None:
    with _buffered() as prod:
        ids = [prod.save_state("a", f"s{i}", {"i": i}) for i in range(250)]
        assert len(set(ids)) == 250
        assert fake.llen(keys.QUEUE) == 0 and prod.buffered == 250
        assert prod.unconfirmed == 250
        prod.flush(timeout=10)
        assert prod.buffered == 0 and prod.unconfirmed == 250
    (message,) = _queued(fake)
    assert [op["id"] for op in message.ops] == ids
    # The message has its recovery record, as a durable save's has.
    assert fake.zrange(keys.PENDING_KEY, 0, -1) == [message.id.encode()]
    assert fake.hget(keys.MESSAGES_KEY, message.id) == fake.lindex(keys.QUEUE, 0)


def test_a_full_batch_goes_out_at_once_in_save_order(fake: fakeredis.FakeRedis) -> None:
    with _buffered(max_batch=100) as prod:
        ids = [prod.save_state("a", f"s{i}", {"i": i}) for i in range(1000)]
        _until(lambda: prod.buffered == 0)
        messages = _queued(fake)
    assert all(len(m.ops) <= 100 for m in messages)
    assert [op["id"] for m in messages for op in m.ops] == ids, "published in save order"
    versions = [op["version"] for m in messages for op in m.ops]
    assert versions == sorted(versions)
    assert fake.zcard(keys.PENDING_KEY) == fake.hlen(keys.MESSAGES_KEY) == len(messages)


def test_every_kind_goes_through_the_buffer(fake: fakeredis.FakeRedis) -> None:
    with _buffered() as prod:
        prod.save_state("a", "s", {"x": 0.5})
        prod.save_task("a", "t", {"y": 2})
        prod.save_conversation("c", {"role": "user"})
        prod.save_transactions("case", [{"amount": 3}])
    (message,) = _queued(fake)
    assert [op["op"] for op in message.ops] == [
        "save_state",
        "save_task",
        "save_conversation",
        "save_transactions",
    ]


def test_linger_publishes_without_a_flush(fake: fakeredis.FakeRedis) -> None:
    with _buffered(linger_ms=20) as prod:
        prod.save_state("a", "s", {"x": 1})
        _until(lambda: fake.llen(keys.QUEUE) == 1)
        assert prod.buffered == 0


def test_bad_input_raises_at_the_call_and_buffers_nothing(fake: fakeredis.FakeRedis) -> None:
    with _buffered() as prod:
        with pytest.raises(ValidationError):
            prod.save_state("a", "s", {"x": float("nan")})
        with pytest.raises(ValidationError):
            prod.save_conversation("", {})
        assert prod.buffered == 0


def test_the_caller_mutating_a_payload_after_the_save_changes_nothing(
    fake: fakeredis.FakeRedis,
) -> None:
    state: dict[str, Any] = {"step": 1}
    with _buffered() as prod:
        prod.save_state("a", "s", state)
        state["step"] = 2
    assert _queued(fake)[0].ops[0]["args"]["state"] == {"step": 1}


def test_a_failing_broker_keeps_the_ops_and_retries_with_the_same_message_ids(
    fake: fakeredis.FakeRedis,
) -> None:
    prod = _buffered(linger_ms=5)
    broker = Broker(prod)
    ids = [prod.save_state("a", f"s{i}", {"i": i}) for i in range(10)]
    _until(lambda: broker.attempts >= 2)
    assert prod.publish_error is not None and "refused" in str(prod.publish_error)
    assert prod.buffered == 10 and fake.llen(keys.QUEUE) == 0
    with pytest.raises(PublishError, match="not published within"):
        prod.flush(timeout=0.2)
    broker.down = False
    prod.flush(timeout=10)
    assert prod.publish_error is None
    assert len({tuple(mids) for mids in broker.message_ids}) == 1, "retries reuse message ids"
    assert [op["id"] for m in _queued(fake) for op in m.ops] == ids
    prod.close()


def test_a_full_buffer_blocks_then_raises_with_the_brokers_error(
    fake: fakeredis.FakeRedis,
) -> None:
    prod = _buffered(linger_ms=1, max_batch=5, max_buffer=20, buffer_timeout=0.2)
    Broker(prod)
    for i in range(20):
        prod.save_state("a", f"s{i}", {"i": i})
    with pytest.raises(BufferFullError, match=r"20 buffered ops.*refused") as info:
        prod.save_state("a", "one too many", {})
    assert isinstance(info.value, PublishError)
    assert prod.buffered == 20
    with pytest.raises(PublishError, match=r"20 buffered op.*lost"):
        prod.close(timeout=0.2)


def test_a_full_buffer_takes_saves_again_once_it_drains(fake: fakeredis.FakeRedis) -> None:
    prod = _buffered(linger_ms=1, max_batch=5, max_buffer=10, buffer_timeout=10)
    broker = Broker(prod)
    for i in range(10):
        prod.save_state("a", f"s{i}", {})
    threading.Timer(0.1, lambda: setattr(broker, "down", False)).start()
    prod.save_state("a", "waited for room", {})  # blocks until the broker is back
    prod.close()
    assert sum(len(m.ops) for m in _queued(fake)) == 11


def test_wait_flushes_buffered_ops_first(fake: fakeredis.FakeRedis) -> None:
    with _buffered() as prod:
        op_id = op_id_of(prod.save_state("a", "s", {}))

        def confirm() -> None:
            _until(lambda: fake.zcard(keys.PENDING_KEY) == 1)
            settle(fake, pending_ids(fake))

        thread = threading.Thread(target=confirm)
        thread.start()
        prod.wait([op_id], timeout=10)
        thread.join()
        assert prod.unconfirmed == 0


def test_close_publishes_what_is_buffered_and_refuses_later_saves(
    fake: fakeredis.FakeRedis,
) -> None:
    prod = _buffered()
    for i in range(3):
        prod.save_state("a", f"s{i}", {})
    prod.close()
    assert sum(len(m.ops) for m in _queued(fake)) == 3
    with pytest.raises(RuntimeError, match="closed"):
        prod.save_state("a", "late", {})
    prod.close()


@pytest.mark.parametrize(
    "kw",
    [{"linger_ms": -1}, {"linger_ms": 5, "max_batch": 0}, {"linger_ms": 5, "max_batch": 501}],
)
def test_bad_buffer_settings_are_refused(fake: fakeredis.FakeRedis, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Producer(broker_url="redis://127.0.0.1:6379/0", **kw)


def test_wait_reports_ops_of_a_message_refused_as_a_whole(fake: fakeredis.FakeRedis) -> None:
    with _buffered() as prod:
        ids = [op_id_of(prod.save_state("a", f"s{i}", {})) for i in range(3)]
        prod.flush()
        (message,) = _queued(fake)
        record = json.dumps({"error": "undecodable: boom"})
        settle(fake, [message.id], [(message.id, record, 1.0)])
        with pytest.raises(DeadLetteredError, match="boom") as info:
            prod.wait(ids, timeout=5)
        assert info.value.op_ids == ids
