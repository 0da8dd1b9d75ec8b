"""Batching, retries, dead letters and the reaper against fakeredis and an in-memory store."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from producer import wire
from producer.publisher import Publisher
from storage.ops import make_op
from tests.unit.flaky import FlakyStore
from worker import deadletters
from worker.apply import BatchApplier
from worker.reaper import Reaper
from worker.settings import WorkerSettings


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    monkeypatch.setattr("producer.publisher.connect", lambda url, timeout: client)
    yield client


def _publish(fake: fakeredis.FakeRedis, n: int, poison: int | None = None) -> list[str]:
    pub = Publisher("redis://127.0.0.1:6379/0")
    ids = []
    for i in range(n):
        op = make_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": {"i": i}})
        text = op.model_dump_json()
        if i == poison:
            text = json.dumps({**json.loads(text), "args": {"agent_id": ""}})
        pub.publish([(op.id, wire.build_message(op.id, [text]))])
        ids.append(op.id)
    return ids


def _deliver(applier: BatchApplier, fake: fakeredis.FakeRedis) -> Any:
    """What Celery does: pop one message and run the task with its argument."""
    message = wire.parse_message(fake.rpop(wire.QUEUE))
    return applier.run(message.id, message.ops)


def _applier(store: FlakyStore, fake: fakeredis.FakeRedis, **kw: Any) -> BatchApplier:
    settings = WorkerSettings(batch_wait_ms=0, retry_max_s=5, **kw)
    return BatchApplier(store, fake, settings, sleep=lambda s: None)


def test_one_task_applies_other_ready_messages_in_one_call_and_confirms(
    fake: fakeredis.FakeRedis,
) -> None:
    ids = _publish(fake, 30)
    store = FlakyStore()
    batch = _deliver(_applier(store, fake, batch_max=20), fake)
    assert len(store.calls) == 1 and store.calls[0] == ids[:20]
    assert batch.message_ids == ids[:20]
    assert fake.zcard(wire.PENDING_KEY) == 10 and fake.llen(wire.QUEUE) == 10
    assert fake.hlen(wire.MESSAGES_KEY) == 10


def test_invalid_op_is_dead_lettered_and_the_rest_applied(fake: fakeredis.FakeRedis) -> None:
    ids = _publish(fake, 5, poison=2)
    store = FlakyStore()
    _deliver(_applier(store, fake), fake)
    assert store.calls == [[i for n, i in enumerate(ids) if n != 2]]
    record = deadletters.DeadLetters(client=fake).get(ids[2])
    assert record is not None and "agent_id" in record["error"] and record["message_id"] == ids[2]
    assert fake.zcard(wire.PENDING_KEY) == 0


def test_a_permanently_failing_op_is_isolated_by_halving(fake: fakeredis.FakeRedis) -> None:
    ids = _publish(fake, 16)
    store = FlakyStore()
    store.poison = {ids[5]}
    _deliver(_applier(store, fake), fake)
    assert store.list_states("a") == sorted(f"s{i}" for i in range(16) if i != 5)
    dlq = deadletters.DeadLetters(client=fake)
    assert dlq.count() == 1 and f"cannot store {ids[5]}" in dlq.get(ids[5])["error"]  # type: ignore[index]
    assert fake.zcard(wire.PENDING_KEY) == 0


def test_transient_failures_are_retried_then_dead_lettered(fake: fakeredis.FakeRedis) -> None:
    ids = _publish(fake, 3)
    store = FlakyStore()
    store.transient_failures = 2
    applier = _applier(store, fake, batch_max=1)
    _deliver(applier, fake)
    assert len(store.calls) == 3 and store.get_state("a", "s0") == {"i": 0}
    store.transient_failures = 100
    _deliver(applier, fake)
    record = deadletters.DeadLetters(client=fake).get(ids[1])
    assert record is not None and record["attempts"] == 6 and "gave up" in record["error"]


def test_pickle_and_foreign_messages_are_refused_never_decoded(
    fake: fakeredis.FakeRedis, tmp_path: Any
) -> None:
    ids = _publish(fake, 1)
    evil = json.loads(wire.build_message("evil1", ["{}"]))
    evil["content-type"] = "application/x-python-serialize"
    evil["body"] = base64.b64encode(
        # Protocol-0 pickle of `open(path, "w")`, by hand: unpickling it creates the file.
        b"c__builtin__\nopen\n(V" + str(tmp_path / "pwned").encode() + b"\nVw\ntR."
    ).decode()
    fake.lpush(wire.QUEUE, json.dumps(evil), b"\x80not json", json.dumps({"headers": {}}))
    store = FlakyStore()
    batch = _deliver(_applier(store, fake), fake)
    assert not (tmp_path / "pwned").exists()
    assert len(batch.dead) == 3 and store.calls == [ids]
    dlq = deadletters.DeadLetters(client=fake)
    assert "x-python-serialize" in dlq.get("evil1")["error"]  # type: ignore[index]
    assert {r["error"] for r in dlq.list()} >= {"message is not JSON"}


def test_reaper_republishes_only_what_left_the_queue(fake: fakeredis.FakeRedis) -> None:
    ids = _publish(fake, 10)
    lost = [fake.rpop(wire.QUEUE) for _ in range(3)]  # taken by a worker that then died
    assert lost
    reaper = Reaper(fake, recovery_after_s=0.2, interval_s=0.01)
    assert reaper.run_once() == 0  # first seen out of the queue now
    fake.delete(wire.REAPER_LOCK_KEY)
    assert reaper.run_once() == 0  # not out for long enough yet
    import time

    time.sleep(0.25)
    fake.delete(wire.REAPER_LOCK_KEY)
    assert reaper.run_once() == 3
    queue = [wire.parse_message(m).id for m in reversed(fake.lrange(wire.QUEUE, 0, -1))]
    assert queue == ids[:3] + ids[3:], "oldest first, the backlog untouched"
    fake.delete(wire.REAPER_LOCK_KEY)
    assert reaper.run_once() == 0, "a backlog still queued is never republished"


def test_reaper_rounds_are_serialized_by_the_lock(fake: fakeredis.FakeRedis) -> None:
    _publish(fake, 2)
    fake.rpop(wire.QUEUE, 2)
    reaper = Reaper(fake, recovery_after_s=0, interval_s=60)
    assert reaper.run_once() == 0
    assert fake.pttl(wire.REAPER_LOCK_KEY) > 0
    assert reaper.run_once() == 0 and fake.llen(wire.QUEUE) == 0


def test_dead_letters_replay_and_purge(fake: fakeredis.FakeRedis) -> None:
    ids = _publish(fake, 4)
    store = FlakyStore()
    store.poison = {ids[1], ids[2]}
    _deliver(_applier(store, fake), fake)
    dlq = deadletters.DeadLetters(client=fake)
    assert dlq.count() == 2 and {r["id"] for r in dlq.list(limit=10)} == {ids[1], ids[2]}
    assert len(dlq.list(limit=1, offset=1)) == 1
    original = dlq.get(ids[1])
    assert original is not None
    assert dlq.replay([ids[1], "unknown"]) == 1
    assert dlq.count() == 1
    message = wire.parse_message(fake.lindex(wire.QUEUE, 0))
    assert message.ops == [original["op"]] and message.id == ids[1]
    store.poison.clear()
    _deliver(_applier(store, fake), fake)
    assert store.get_state("a", "s1") == {"i": 1}
    assert dlq.purge("all") == 1 and dlq.count() == 0
