"""Producer behaviour against fakeredis (fast; the real queue path is in tests/integration)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import fakeredis
import pytest

import broker.publisher
import producer.client
import producer.tracker
from agentstore_cli.launch import free_port
from broker import keys, wire
from broker.deadletters import DeadLetters, settle
from producer import DeadLetteredError, LostOpsError, Producer, PublishError
from storage import InMemoryStorageClient, StorageError, ValidationError
from storage.ops import make_op
from tests.queued import op_id_of, pending_ids


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    monkeypatch.setattr(broker.publisher, "connect", lambda url, timeout, sentinel=None: client)
    yield client


@pytest.fixture
def prod(fake: fakeredis.FakeRedis) -> Iterator[Producer]:
    with Producer(broker_url="redis://127.0.0.1:6379/0") as p:
        yield p


def _queued(fake: fakeredis.FakeRedis) -> list[wire.Message]:
    return [wire.parse_message(raw) for raw in reversed(fake.lrange(keys.QUEUE, 0, -1))]


def test_save_publishes_one_message_per_op_with_its_recovery_record(
    prod: Producer, fake: fakeredis.FakeRedis
) -> None:
    ids = [
        op_id_of(prod.save_state("a", "s", {"x": 1})),
        op_id_of(prod.save_task("a", "t", {"y": 2})),
        op_id_of(prod.save_conversation("c", {"role": "user", "text": "hi"})),
        op_id_of(prod.save_transactions("case", [{"id": "t1", "amount": 3}])),
    ]
    messages = _queued(fake)
    assert [m.id for m in messages] == ids
    assert [m.ops[0]["op"] for m in messages] == [
        "save_state",
        "save_task",
        "save_conversation",
        "save_transactions",
    ]
    pending = cast(list[tuple[bytes, float]], fake.zrange(keys.PENDING_KEY, 0, -1, withscores=True))
    assert [mid.decode() for mid, _ in pending] == ids
    assert [score for _, score in pending] == sorted(score for _, score in pending)
    assert fake.hget(keys.MESSAGES_KEY, ids[0]) == fake.lindex(keys.QUEUE, -1)
    versions = [m.ops[0]["version"] for m in messages]
    assert versions == sorted(versions), "send order is version order"


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.save_state("", "s", {}),
        lambda p: p.save_state("a", "s", {"x": float("nan")}),
        lambda p: p.save_task("a", "t", {"x": object()}),
        lambda p: p.save_conversation("c", "not a dict"),
        lambda p: p.save_transactions("c", [{"id": ""}]),
        lambda p: p.save_state("a", "s", {}, version="bad version!"),
    ],
)
def test_bad_input_raises_at_the_call_and_publishes_nothing(
    prod: Producer, fake: fakeredis.FakeRedis, call: Any
) -> None:
    with pytest.raises(ValidationError):
        call(prod)
    assert fake.llen(keys.QUEUE) == 0
    assert fake.zcard(keys.PENDING_KEY) == 0


def test_message_matches_what_celery_itself_builds(
    prod: Producer, fake: fakeredis.FakeRedis
) -> None:
    from celery import Celery

    app = Celery("probe", set_as_current=False)
    celery_msg = app.amqp.as_task_v2("x" * 32, wire.TASK_NAME, args=[[{"op": "save_state"}]])
    prod.save_state("a", "s", {"x": 1})
    ours = json.loads(cast(bytes, fake.lindex(keys.QUEUE, 0)))
    # Ours adds one header, the publish time (Celery passes unknown headers on to the task).
    assert set(ours["headers"]) == {*celery_msg.headers, "published"}
    assert abs(ours["headers"]["published"] - time.time()) < 60
    assert ours["content-type"] == "application/json"
    assert ours["properties"]["body_encoding"] == "base64"
    assert ours["properties"]["delivery_info"]["routing_key"] == keys.QUEUE
    body = json.loads(base64.b64decode(ours["body"]))
    assert body[1] == {} and set(body[2]) == set(celery_msg.body[2])
    assert "x" not in ours["headers"]["argsrepr"], "payloads never reach the worker's log"


def test_apply_publishes_many_ops_per_message(prod: Producer, fake: fakeredis.FakeRedis) -> None:
    ops = [
        make_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": {}})
        for i in range(1001)
    ]
    prod.apply(ops)
    messages = _queued(fake)
    assert [len(m.ops) for m in messages] == [500, 500, 1]
    assert [op["id"] for m in messages for op in m.ops] == [op.id for op in ops]
    assert prod.unconfirmed == 1001


def _confirm_later(fake: fakeredis.FakeRedis, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        settle(fake, pending_ids(fake))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_returns_when_confirmed_and_forgets(prod: Producer, fake: fakeredis.FakeRedis) -> None:
    op_id = op_id_of(prod.save_state("a", "s", {}))
    thread = _confirm_later(fake, 0.05)
    prod.wait(timeout=5)
    thread.join()
    assert prod.unconfirmed == 0
    prod.wait([op_id], timeout=0.1)


def test_wait_times_out(prod: Producer) -> None:
    prod.save_state("a", "s", {})
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="1 op"):
        prod.wait(timeout=0.2)
    assert time.monotonic() - started < 1


def test_wait_raises_for_a_dead_lettered_op(prod: Producer, fake: fakeredis.FakeRedis) -> None:
    good = op_id_of(prod.save_state("a", "s", {}))
    bad = op_id_of(prod.save_state("a", "t", {}))
    worse = op_id_of(prod.save_state("a", "u", {}))
    dead = [(bad, json.dumps({"error": "boom"}), 1.0), (worse, json.dumps({"error": "bang"}), 1.0)]
    settle(fake, [good, bad, worse], dead)
    for _ in range(3):  # every time it is asked
        with pytest.raises(DeadLetteredError) as info:
            prod.wait(timeout=1)
        assert info.value.errors == {bad: "boom", worse: "bang"}
        assert info.value.op_id == bad and bad in str(info.value) and worse in str(info.value)
        with pytest.raises(DeadLetteredError):
            prod.wait([worse], timeout=1)
    assert prod.unconfirmed == 2
    prod.wait([good], timeout=0.1)
    DeadLetters(client=fake).purge([bad, worse])  # cleared: confirmed, nothing left to report
    prod.wait(timeout=0.1)
    assert prod.unconfirmed == 0


def test_wait_names_ops_the_broker_lost(prod: Producer, fake: fakeredis.FakeRedis) -> None:
    kept = op_id_of(prod.save_state("a", "s", {}))
    settle(fake, [kept])
    lost = [op_id_of(prod.save_state("a", f"t{i}", {})) for i in range(7)]
    fake.delete(keys.PENDING_KEY, keys.QUEUE)  # as after a restart without AOF
    with pytest.raises(LostOpsError) as info:
        prod.wait(timeout=5)
    assert info.value.op_ids == lost and lost[0] in str(info.value)
    assert "2 more" in str(info.value)
    with pytest.raises(LostOpsError):
        prod.wait([lost[3]], timeout=5)
    assert prod.unconfirmed == 0


def test_memory_stays_bounded(fake: fakeredis.FakeRedis) -> None:
    with Producer(broker_url="redis://x:6379/0", max_tracked=50) as p:
        for i in range(120):
            p.save_state("a", f"s{i}", {})
        assert p.unconfirmed == 50, "the newest 50 stay tracked: bounded, not forgotten"


def test_forgetting_warns_at_most_every_ten_seconds_with_the_count(
    fake: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(producer.tracker, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    caplog.set_level("WARNING", logger="producer.tracker")
    with Producer(broker_url="redis://x:6379/0", max_tracked=50) as p:
        for i in range(120):  # 70 forgotten, one at a time: one warning, not 70
            p.save_state("a", f"s{i}", {})
        clock[0] += 10.0
        for i in range(5):  # the first says the 69 held back and itself; 4 more wait
            p.save_state("a", f"t{i}", {})
    warnings = [r.getMessage() for r in caplog.records if "forgot" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("forgot 1 unconfirmed ops to stay within max_tracked=50")
    assert warnings[1].startswith("forgot 70 unconfirmed ops"), warnings
    assert p.unconfirmed == 50


def test_unreachable_broker_raises_publish_error_fast_with_the_password_masked() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with Producer(broker_url=url, publish_timeout=1.0) as p:
        started = time.monotonic()
        with pytest.raises(PublishError) as info:
            p.save_state("a", "s", {"x": 1})
        assert time.monotonic() - started < 1.0
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_reads_open_a_store_lazily_and_close_closes_it(
    fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores: list[InMemoryStorageClient] = []

    def create(settings: Any) -> InMemoryStorageClient:
        stores.append(InMemoryStorageClient())
        return stores[-1]

    monkeypatch.setattr(producer.client, "create_storage_client", create)
    p = Producer(broker_url="redis://127.0.0.1:6379/0")
    p.save_state("a", "s", {})
    assert stores == [], "a publish-only producer never opens the store"
    assert p.get_state("a", "s") is None
    assert p.get_task("a", "t") is None
    assert len(stores) == 1
    p.close()
    with pytest.raises(StorageError, match="closed"):
        stores[0].get_state("a", "s")
    p.close()


def test_publish_is_atomic_and_one_round_trip(prod: Producer, fake: fakeredis.FakeRedis) -> None:
    prod.save_state("a", "s", {})  # the first publish loads the script
    writes: list[list[bytes]] = []
    conn_class = fake.connection_pool.connection_class
    real = conn_class.send_packed_command

    def spy(self: Any, command: Any, check_health: bool = True) -> Any:
        # Each write's commands by name: the RESP bulk string after each array header.
        writes.append([part.split(b"\r\n")[2] for part in b"".join(command).split(b"*")[1:]])
        return real(self, command, check_health)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conn_class, "send_packed_command", spy)
        prod.save_state("a", "s", {})
    assert writes == [[b"EVALSHA"]]  # one write, one command (WAIT too with replicas)


def test_apply_bounds_message_size(prod: Producer, fake: fakeredis.FakeRedis) -> None:
    big = {"blob": "x" * 1_500_000}
    ops = [
        make_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": big})
        for i in range(3)
    ]
    prod.apply(ops)
    assert [len(m.ops) for m in _queued(fake)] == [2, 1]


def test_messages_are_bounded_by_ops_and_characters_in_order() -> None:
    # The one chunking both the durable batch path and the send buffer use.
    def text(chars: int) -> str:  # a JSON string of exactly `chars` characters
        return '"' + "x" * (chars - 2) + '"'

    half = wire.MAX_MESSAGE_CHARS // 2
    texts = [text(half), text(half), text(wire.MAX_MESSAGE_CHARS + 1), "4", "5", "6"]
    ids = [f"o{i}" for i in range(len(texts))]
    batch = wire.build_messages(ids, texts, max_ops=2)
    assert [op_ids for _, _, op_ids in batch] == [["o0", "o1"], ["o2"], ["o3", "o4"], ["o5"]]
    assert len({mid for mid, _, _ in batch}) == 4
    for mid, message, op_ids in batch:
        parsed = wire.parse_message(message)
        assert parsed.id == mid and len(parsed.ops) == len(op_ids)
    assert wire.build_messages([], []) == []


def _transactions(n: int) -> list[dict[str, Any]]:
    # Each well under the 2,000,000-byte payload limit; 8 of them fit in one save, 9 do not.
    return [{"id": f"t{i}", "blob": "x" * 1_900_000} for i in range(n)]


@pytest.mark.parametrize("linger_ms", [0.0, 5.0])
def test_a_save_over_the_size_limit_is_refused_at_the_call_and_publishes_nothing(
    fake: fakeredis.FakeRedis, linger_ms: float
) -> None:
    with Producer(broker_url="redis://127.0.0.1:6379/0", linger_ms=linger_ms) as p:
        with pytest.raises(ValidationError, match="16,000,000 bytes"):
            p.save_transactions("case", _transactions(9))
        assert p.buffered == 0
        p.flush()
        assert fake.llen(keys.QUEUE) == 0 and fake.zcard(keys.PENDING_KEY) == 0
        p.save_transactions("case", _transactions(8))
        p.save_transactions("case", _transactions(2))
        p.flush()
    raw = fake.lrange(keys.QUEUE, 0, -1)
    assert len(raw) == 2, "the two saves do not share a message"
    assert all(len(wire.parse_message(m).ops) == 1 for m in raw)
