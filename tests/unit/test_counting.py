"""Each message's ops are counted once, by the first settle of that message: a process
killed after the store's commit but before its settle leaves the count to the redelivery,
and a redelivered copy of a settled message counts nothing (`worker.metrics`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from broker import deadletters, keys, wire
from broker.publisher import Publisher
from storage.ops import encode_op
from tests.queued import pop_message
from tests.unit.flaky import FlakyStore
from worker import tallies
from worker.apply import Batch, BatchApplier
from worker.settings import WorkerSettings

SAVES = 5


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs in that process."""


def _applied(backend: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "agentstore_ops_applied_total", {"kind": "state", "backend": backend}
        )
        or 0.0
    )


def _stale() -> float:
    return REGISTRY.get_sample_value("agentstore_ops_stale_total", {"kind": "state"}) or 0.0


def _redeliver(client: redis.Redis, messages: list[tuple[str, bytes]]) -> None:
    """What the reaper (or kombu's restore) does: the same messages back in the queue."""
    client.rpush(keys.QUEUE, *[raw for _, raw in messages])


@pytest.fixture
def published(rds: redis.Redis) -> Iterator[list[tuple[str, bytes]]]:
    messages = []
    for i in range(SAVES):
        op_id, text = encode_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": {}})
        messages.append((op_id, wire.build_message(op_id, [text])))
    publisher = Publisher("redis://127.0.0.1:6379/0")  # connects to `rds` (see conftest)
    publisher.publish(messages)
    yield messages


def _run(applier: BatchApplier, client: redis.Redis) -> Batch:
    first = pop_message(client)
    return applier.run(first.id, first.ops)


def test_ops_committed_by_a_killed_process_are_counted_by_their_redelivery_once(
    rds: redis.Redis, published: list[tuple[str, bytes]], request: pytest.FixtureRequest
) -> None:
    backend = request.node.name  # a label of this test's own
    store = FlakyStore()
    settings = WorkerSettings(batch_wait_ms=0)
    killed = BatchApplier(lambda: store, rds, settings, sleep=lambda s: None, backend=backend)

    def die(batch: Batch) -> None:
        raise Killed

    killed._confirm = die  # type: ignore[method-assign]
    applied, stale = _applied(backend), _stale()
    with pytest.raises(Killed):
        _run(killed, rds)
    ids = [mid for mid, _ in published]
    assert store.calls == [ids], "the store committed every save"
    assert _applied(backend) == applied, "nothing counted before the settle"
    assert rds.zcard(keys.PENDING_KEY) == SAVES

    survivor = BatchApplier(lambda: store, rds, settings, sleep=lambda s: None, backend=backend)
    _redeliver(rds, published)
    _run(survivor, rds)
    assert rds.zcard(keys.PENDING_KEY) == 0
    assert _applied(backend) == applied + SAVES, "held at their version: applied, once"
    assert _stale() == stale
    assert int(rds.get(keys.APPLIED_KEY) or 0) == SAVES

    _redeliver(rds, published)  # a copy of messages settled before
    _run(survivor, rds)
    assert _applied(backend) == applied + SAVES, "a redelivered settled message counts nothing"
    assert _stale() == stale
    assert int(rds.get(keys.APPLIED_KEY) or 0) == SAVES


def test_with_a_tally_list_the_settle_hands_the_counts_over_once(
    rds: redis.Redis, published: list[tuple[str, bytes]], request: pytest.FixtureRequest
) -> None:
    backend = request.node.name
    key = tallies.list_key(12345)
    store = FlakyStore()
    settings = WorkerSettings(batch_wait_ms=0)
    killed = BatchApplier(
        lambda: store, rds, settings, sleep=lambda s: None, backend=backend, tally_list=key
    )

    def settle_then_die(batch: Batch) -> None:
        original(batch)
        raise Killed  # after the settle, before anything else in this process

    original = killed._confirm
    killed._confirm = settle_then_die  # type: ignore[method-assign]
    applied = _applied(backend)
    with pytest.raises(Killed):
        _run(killed, rds)
    assert rds.zcard(keys.PENDING_KEY) == 0, "settled"
    assert _applied(backend) == applied, "the child counted nothing itself"
    assert tallies.drain(rds, key) == 1, "one batch's counts, in Redis"
    assert _applied(backend) == applied + SAVES
    assert tallies.drain(rds, key) == 0, "moved once"

    survivor = BatchApplier(
        lambda: store, rds, settings, sleep=lambda s: None, backend=backend, tally_list=key
    )
    _redeliver(rds, published)  # copies of messages settled before
    _run(survivor, rds)
    assert tallies.drain(rds, key) == 0
    assert _applied(backend) == applied + SAVES, "a redelivered settled message counts nothing"


def test_a_settle_counts_only_the_messages_it_settles_first(
    rds: redis.Redis, published: list[tuple[str, bytes]]
) -> None:
    ids = [mid for mid, _ in published]
    key = tallies.list_key(1)
    each = {mid: 2 for mid in ids}
    assert deadletters.settle(rds, ids[:1], applied=each, tally=(key, "[]", 60)) is None
    assert rds.lrange(key, 0, -1) == [b"[]"], "every message settled first: tally handed over"
    assert int(rds.get(keys.APPLIED_KEY) or 0) == 2
    first = deadletters.settle(rds, ids[:3], applied=each, tally=(key, "[]", 60))
    assert first == set(ids[1:3]), "the copy of the settled message is not among them"
    assert rds.llen(key) == 1, "a mixed batch's tally is counted by its caller"
    assert int(rds.get(keys.APPLIED_KEY) or 0) == 6
    # Sent by another publisher (stock Celery): never pending, first if never confirmed.
    foreign = "never-published-here"
    assert deadletters.settle(rds, [foreign], applied={foreign: 1}) == {foreign}
    assert deadletters.settle(rds, [foreign], applied={foreign: 1}) == set(), "a copy"
    assert int(rds.get(keys.APPLIED_KEY) or 0) == 7
