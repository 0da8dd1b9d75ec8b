"""Cross-message batching in the worker, and in-batch dedupe and ordering in `storage.ops`."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import redis

from broker import keys, wire
from broker.publisher import Publisher
from storage.ops import Op, encode_op, make_op, parse_op
from storage.records import AnyOp, Outcome, records
from tests.queued import pop_message
from tests.unit.flaky import FlakyStore
from worker.apply import BatchApplier
from worker.settings import WorkerSettings


class WatchingStore(FlakyStore):
    """Records, at each apply, how many messages were still pending (not yet confirmed)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client
        self.pending_at_apply: list[int] = []

    def commit(self, ops: Sequence[AnyOp]) -> list[Outcome]:
        self.pending_at_apply.append(int(self.client.zcard(keys.PENDING_KEY)))
        return super().commit(ops)


def _publish_single_saves(n: int) -> list[str]:
    pub = Publisher("redis://127.0.0.1:6379/0")
    ids = []
    for i in range(n):
        op_id, text = encode_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": {}})
        pub.publish([(op_id, wire.build_message(op_id, [text]))])
        ids.append(op_id)
    return ids


def test_many_single_save_messages_are_applied_in_one_call_and_confirmed_after_it(
    rds: redis.Redis,
) -> None:
    ids = _publish_single_saves(50)
    store = WatchingStore(rds)
    applier = BatchApplier(
        lambda: store, rds, WorkerSettings(batch_wait_ms=0), sleep=lambda s: None
    )
    first = pop_message(rds)
    batch = applier.run(first.id, first.ops)
    assert store.calls == [ids], "one apply call for all 50 messages"
    assert store.pending_at_apply == [50], "nothing was confirmed before the apply returned"
    assert batch.message_ids == ids
    assert rds.zcard(keys.PENDING_KEY) == 0 and rds.hlen(keys.MESSAGES_KEY) == 0


def test_a_failed_apply_confirms_nothing(rds: redis.Redis) -> None:
    _publish_single_saves(5)
    store = FlakyStore()
    store.transient_failures = 100
    settings = WorkerSettings(batch_wait_ms=0, retry_tries=2, retry_max_s=0.5)

    class Broken(Exception):
        pass

    def confirm(batch: object) -> None:
        raise Broken

    applier = BatchApplier(lambda: store, rds, settings, sleep=lambda s: None)
    applier._confirm = confirm  # type: ignore[method-assign]
    first = pop_message(rds)
    with pytest.raises(Broken):
        applier.run(first.id, first.ops)
    assert rds.zcard(keys.PENDING_KEY) == 5, "still pending: the reaper will bring them back"


def _op(kind: str, key: str, version: str, **extra: object) -> Op:
    if kind == "state":
        return make_op(
            "save_state", {"agent_id": "a", "state_id": key, "state": extra}, version=version
        )
    return make_op("save_conversation", {"conversation_id": key, "message": extra}, version=version)


def test_dedupe_keeps_the_newest_version_per_key_whatever_the_order() -> None:
    ops = [_op("state", f"s{i % 5}", f"{v:03d}", v=v) for v, i in enumerate(range(50))]
    for seed in range(5):
        shuffled = ops[:]
        random.Random(seed).shuffle(shuffled)
        grouped = records(shuffled)
        states = {rec.sub_id: rec for rec in grouped["state"]}
        assert len(grouped["state"]) == 5
        for i in range(5):
            newest = max(v for v in range(50) if v % 5 == i)
            assert states[f"s{i}"].version == f"{newest:015d}"  # as integers are stored
            assert states[f"s{i}"].data == {"v": newest}


def test_messages_are_never_deduped_and_keep_their_send_order() -> None:
    ops = [_op("conversation", "c", f"{v:03d}", v=v) for v in range(20)]
    again = [parse_op(op.model_dump(mode="json")) for op in ops[:5]]  # redelivered copies
    shuffled = ops + again
    random.Random(1).shuffle(shuffled)
    conv = records(shuffled)["conversation"]
    assert len(conv) == 20, "one row per op id"
    assert [r.data["v"] for r in sorted(conv, key=lambda r: r.position)] == list(range(20))


def _publish_message(n_ops: int, state: dict[str, str] | None = None) -> str:
    pub = Publisher("redis://127.0.0.1:6379/0")
    texts = [
        encode_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": state or {}})[1]
        for i in range(n_ops)
    ]
    mid = wire.new_message_id()
    pub.publish([(mid, wire.build_message(mid, texts))])
    return mid


def test_a_batch_is_bounded_by_ops_not_by_messages(rds: redis.Redis) -> None:
    _publish_message(1)
    for _ in range(10):
        _publish_message(300)
    store = FlakyStore()
    settings = WorkerSettings(batch_max=500, batch_wait_ms=0)
    applier = BatchApplier(lambda: store, rds, settings, sleep=lambda s: None)
    first = pop_message(rds)
    batch = applier.run(first.id, first.ops)
    assert len(batch.message_ids) == 3, "1 + 300 + 300 ops: the message that reached 500 is last"
    assert len(store.calls[0]) == 601
    assert rds.llen(keys.QUEUE) == 8 and rds.zcard(keys.PENDING_KEY) == 8


def test_a_batch_of_large_saves_is_bounded_by_bytes_too(rds: redis.Redis) -> None:
    for _ in range(30):
        _publish_message(1, {"b": "x" * 1_900_000})
    store = FlakyStore()
    settings = WorkerSettings(batch_wait_ms=0)
    applier = BatchApplier(lambda: store, rds, settings, sleep=lambda s: None)
    first = pop_message(rds)
    batch = applier.run(first.id, first.ops)
    # ~2.5 MB per message as base64: 32 MB of them, plus the delivered one and the last.
    assert 10 <= len(batch.message_ids) <= 15, len(batch.message_ids)
    assert rds.llen(keys.QUEUE) == 30 - len(batch.message_ids)
