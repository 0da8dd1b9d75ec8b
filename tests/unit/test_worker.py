"""Batching, retries, dead letters and the reaper on a real redis-server and an in-memory store."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, cast

import redis

from broker import deadletters, keys, wire
from broker.publisher import Publisher
from storage.ops import make_op
from tests.queued import pop_message
from tests.unit.flaky import FlakyStore
from worker.apply import Batch, BatchApplier
from worker.reaper import Reaper
from worker.settings import WorkerSettings


def _publish(rds: redis.Redis, n: int, poison: int | None = None) -> list[str]:
    pub = Publisher("redis://127.0.0.1:6379/0")
    messages = []
    for i in range(n):
        op = make_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": {"i": i}})
        text = op.model_dump_json()
        if i == poison:
            text = json.dumps({**json.loads(text), "args": {"agent_id": ""}})
        messages.append((op.id, wire.build_message(op.id, [text])))
    pub.publish(messages)
    return [mid for mid, _ in messages]


def _deliver(applier: BatchApplier, rds: redis.Redis) -> Batch:
    """What Celery does: pop one message and run the task with its argument."""
    message = pop_message(rds)
    return applier.run(message.id, message.ops)


def _applier(store: FlakyStore, rds: redis.Redis, **kw: Any) -> BatchApplier:
    settings = WorkerSettings(batch_wait_ms=0, retry_max_s=5, **kw)
    return BatchApplier(lambda: store, rds, settings, sleep=lambda s: None)


def test_one_task_applies_other_ready_messages_in_one_call_and_confirms(
    rds: redis.Redis,
) -> None:
    ids = _publish(rds, 30)
    store = FlakyStore()
    batch = _deliver(_applier(store, rds, batch_max=20), rds)
    assert len(store.calls) == 1 and store.calls[0] == ids[:20]
    assert batch.message_ids == ids[:20]
    assert rds.zcard(keys.PENDING_KEY) == 10 and rds.llen(keys.QUEUE) == 10
    assert rds.hlen(keys.MESSAGES_KEY) == 10


def test_invalid_op_is_dead_lettered_and_the_rest_applied(rds: redis.Redis) -> None:
    ids = _publish(rds, 5, poison=2)
    store = FlakyStore()
    _deliver(_applier(store, rds), rds)
    assert store.calls == [[i for n, i in enumerate(ids) if n != 2]]
    record = deadletters.DeadLetters(client=rds).get(ids[2])
    assert record is not None and "agent_id" in record["error"] and record["message_id"] == ids[2]
    assert rds.zcard(keys.PENDING_KEY) == 0


def test_a_permanently_failing_op_is_isolated_by_halving(rds: redis.Redis) -> None:
    ids = _publish(rds, 16)
    store = FlakyStore()
    store.poison = {ids[5]}
    _deliver(_applier(store, rds), rds)
    assert store.list_states("a") == sorted(f"s{i}" for i in range(16) if i != 5)
    dlq = deadletters.DeadLetters(client=rds)
    record = dlq.get(ids[5])
    assert dlq.count() == 1 and record is not None and f"cannot store {ids[5]}" in record["error"]
    assert rds.zcard(keys.PENDING_KEY) == 0


def test_transient_failures_are_retried_then_dead_lettered(rds: redis.Redis) -> None:
    ids = _publish(rds, 3)
    store = FlakyStore()
    store.transient_failures = 2
    applier = _applier(store, rds, batch_max=1)
    _deliver(applier, rds)
    assert len(store.calls) == 3 and store.get_state("a", "s0") is not None
    store.transient_failures = 100
    _deliver(applier, rds)
    record = deadletters.DeadLetters(client=rds).get(ids[1])
    assert record is not None and record["attempts"] == 6 and "gave up" in record["error"]


def test_pickle_and_foreign_messages_are_refused_never_decoded(
    rds: redis.Redis, tmp_path: Any
) -> None:
    ids = _publish(rds, 1)
    evil = json.loads(wire.build_message("evil1", ["{}"]))
    evil["content-type"] = "application/x-python-serialize"
    evil["body"] = base64.b64encode(
        # Protocol-0 pickle of `open(path, "w")`, by hand: unpickling it creates the file.
        b"c__builtin__\nopen\n(V" + str(tmp_path / "pwned").encode() + b"\nVw\ntR."
    ).decode()
    rds.lpush(keys.QUEUE, json.dumps(evil), b"\x80not json", json.dumps({"headers": {}}))
    store = FlakyStore()
    batch = _deliver(_applier(store, rds), rds)
    assert not (tmp_path / "pwned").exists()
    assert len(batch.dead) == 3 and store.calls == [ids]
    dlq = deadletters.DeadLetters(client=rds)
    record = dlq.get("evil1")
    assert record is not None and "x-python-serialize" in record["error"]
    assert {r["error"] for r in dlq.list()} >= {"message is not JSON"}


def test_reaper_republishes_only_what_left_the_queue(rds: redis.Redis) -> None:
    ids = _publish(rds, 10)
    lost = [rds.rpop(keys.QUEUE) for _ in range(3)]  # taken by a worker that then died
    assert lost
    reaper = Reaper(rds, recovery_after_s=0.2, interval_s=0.01)
    assert reaper.run_once() == 0  # first seen out of the queue now
    rds.delete(keys.REAPER_LOCK_KEY)
    assert reaper.run_once() == 0  # not out for long enough yet
    time.sleep(0.25)
    rds.delete(keys.REAPER_LOCK_KEY)
    assert reaper.run_once() == 3
    queue = [wire.parse_message(m).id for m in reversed(rds.lrange(keys.QUEUE, 0, -1))]
    assert queue == ids[:3] + ids[3:], "oldest first, the backlog untouched"
    rds.delete(keys.REAPER_LOCK_KEY)
    assert reaper.run_once() == 0, "a backlog still queued is never republished"


def test_reaper_rounds_are_serialized_by_the_lock(rds: redis.Redis) -> None:
    _publish(rds, 2)
    rds.rpop(keys.QUEUE, 2)
    reaper = Reaper(rds, recovery_after_s=0, interval_s=60)
    assert reaper.run_once() == 0
    assert rds.pttl(keys.REAPER_LOCK_KEY) > 0
    assert reaper.run_once() == 0 and rds.llen(keys.QUEUE) == 0


def test_one_round_marks_and_then_pushes_back_every_lost_message_however_many(
    rds: redis.Redis,
) -> None:
    # 2,500 lost at once: three chunks of one round, where a cap of 1,000 per round took
    # one recovery period per 1,000 messages.
    ids = _publish(rds, 2600)
    rds.rpop(keys.QUEUE, 2500)
    reaper = Reaper(rds, recovery_after_s=0.3, interval_s=0.01, chunk=1000)
    assert reaper.run_once() == 0
    assert rds.hlen(keys.OUT_SINCE_KEY) == 2500, "all seen out of the queue in one round"
    time.sleep(0.35)
    rds.delete(keys.REAPER_LOCK_KEY)
    assert reaper.run_once() == 2500, "all pushed back in one round"
    queue = [wire.parse_message(m).id for m in reversed(rds.lrange(keys.QUEUE, 0, -1))]
    assert queue == ids, "oldest first, the backlog untouched"
    assert rds.hlen(keys.OUT_SINCE_KEY) == 0
    rds.delete(keys.REAPER_LOCK_KEY)
    assert reaper.run_once() == 0


def test_a_long_queue_is_never_marked_nor_republished(rds: redis.Redis) -> None:
    _publish(rds, 5000)
    reaper = Reaper(rds, recovery_after_s=0, interval_s=0.01, chunk=1000)
    for _ in range(2):
        rds.delete(keys.REAPER_LOCK_KEY)
        assert reaper.run_once() == 0
    assert rds.hlen(keys.OUT_SINCE_KEY) == 0 and rds.llen(keys.QUEUE) == 5000


def test_a_round_spaces_the_next_one_from_its_own_start(rds: redis.Redis) -> None:
    reaper = Reaper(rds, interval_s=0.5)
    assert reaper.run_once() == 0
    # A worker waits until the lock expires, not a whole interval after failing to take it.
    assert 0 < reaper.next_round_in() <= 0.5
    rds.set(keys.REAPER_LOCK_KEY, "other", px=50)
    assert reaper.next_round_in() <= 0.05
    rds.set(keys.REAPER_LOCK_KEY, "other", px=60_000)
    assert reaper.next_round_in() == 0.5, "a round in progress elsewhere: check back later"


def test_dead_letters_replay_and_purge(rds: redis.Redis) -> None:
    ids = _publish(rds, 4)
    store = FlakyStore()
    store.poison = {ids[1], ids[2]}
    _deliver(_applier(store, rds), rds)
    dlq = deadletters.DeadLetters(client=rds)
    assert dlq.count() == 2 and {r["id"] for r in dlq.list(limit=10)} == {ids[1], ids[2]}
    assert len(dlq.list(limit=1, offset=1)) == 1
    original = dlq.get(ids[1])
    assert original is not None
    assert dlq.replay([ids[1], "unknown"]) == 1
    assert dlq.count() == 1
    message = wire.parse_message(cast(bytes, rds.lindex(keys.QUEUE, 0)))
    assert message.ops == [original["op"]] and message.id == ids[1]
    store.poison.clear()
    _deliver(_applier(store, rds), rds)
    assert store.get_state("a", "s1") is not None
    assert dlq.purge("all") == 1 and dlq.count() == 0


def test_transient_retries_span_the_retry_budget(rds: redis.Redis) -> None:
    # Each try fails at once (connection refused); the pauses between them, not the tries,
    # must take AGENTSTORE_RETRY_MAX_S, or a 30 s outage dead-letters after 3 s.
    _publish(rds, 1)
    store = FlakyStore()
    store.transient_failures = 100
    pauses: list[float] = []
    settings = WorkerSettings(batch_wait_ms=0, retry_tries=6, retry_max_s=30)
    applier = BatchApplier(lambda: store, rds, settings, sleep=pauses.append)
    _deliver(applier, rds)
    assert len(store.calls) == 6, "every try was made"
    assert len(pauses) == 5 and pauses == sorted(pauses)
    assert 0.8 * 30 <= sum(pauses) <= 30, pauses
    assert deadletters.DeadLetters(client=rds).count() == 1, "dead-lettered once spent"
