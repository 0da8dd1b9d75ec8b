"""Malformed messages put on the queue by hand, against a real worker: each is
dead-lettered with a reason, leaves `pending`, and the worker goes on applying saves.

(A pickle message is covered in test_queue.py; these are the other ways to be wrong.)
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable

import redis

from broker import keys, wire
from broker.deadletters import DeadLetters
from broker.publisher import Publisher
from tests.integration.helpers import pending, producer, wait_until
from tests.plugin import WorkerFactory
from tests.queued import op_id_of


def _op(mid: str, **fields: object) -> str:
    op: dict[str, object] = {
        "op": "save_state",
        "id": mid,
        "version": "1",
        "args": {"agent_id": "a", "state_id": mid, "state": {"x": 1}},
    }
    op.update(fields)
    return json.dumps(op)


def _with_body(mid: str, body: bytes, **headers: object) -> bytes:
    message = json.loads(wire.build_message(mid, ["{}"]))
    message["body"] = base64.b64encode(body).decode()
    message["headers"].update(headers)
    return json.dumps(message).encode()


# message id -> (message, what its dead letter's error must say)
CASES: dict[str, tuple[Callable[[str], bytes], str]] = {
    "unknownop": (
        lambda m: wire.build_message(m, [_op(m, op="drop_everything")]),
        "drop_everything",
    ),
    "missingfields": (
        lambda m: wire.build_message(m, [_op(m, args={"agent_id": "a"})]),
        "state_id",
    ),
    "badversion": (
        lambda m: wire.build_message(m, [_op(m, version="not a version!")]),
        "version",
    ),
    "intversion": (lambda m: wire.build_message(m, [_op(m, version=12345)]), "version"),
    "opnotadict": (lambda m: wire.build_message(m, ['"just a string"']), "invalid op"),
    "extrafield": (lambda m: wire.build_message(m, [_op(m, sql="DROP TABLE")]), "sql"),
    "bodynotjson": (lambda m: _with_body(m, b"{not json"), "JSON"),
    "argsnotalist": (
        lambda m: _with_body(m, b'[[{"op": "save_state"}], {}, {}]'),
        "non-empty list of ops",
    ),
    "noargs": (lambda m: _with_body(m, b"[[], {}, {}]"), "ops"),
    "unknowntask": (
        lambda m: _with_body(m, b"[[[]], {}, {}]", task="os.system"),
        "os.system",
    ),
}


def test_malformed_messages_are_dead_lettered_with_a_reason_and_the_worker_goes_on(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    worker = start_worker(broker, database)
    client = redis.Redis.from_url(broker)
    publisher = Publisher(broker)
    dlq = DeadLetters(broker)
    try:
        with producer(broker, database) as prod:
            for mid, (build, _) in CASES.items():
                # Published as the producer would, so each is also in `pending`.
                publisher.publish([(mid, build(mid))])
                prod.save_state("agent", f"after-{mid}", {"ok": mid})
            prod.wait(timeout=30)
            for mid in CASES:
                assert prod.get_state("agent", f"after-{mid}") == {"ok": mid}
        wait_until("every dead letter", lambda: dlq.count() >= len(CASES), 15)
        # Keyed by op id, or by message id when there is no op to key on.
        by_message = {r["message_id"]: r for r in dlq.list(limit=100)}
        for mid, (_, reason) in CASES.items():
            record = by_message.get(mid)
            assert record is not None, f"{mid} was not dead-lettered"
            assert reason in record["error"], (mid, record["error"])
        assert dlq.count() == len(CASES)
        assert pending(client) == 0, "refused messages leave pending, so none is republished"
        assert worker.alive()
    finally:
        dlq.close()
        publisher.close()
        client.close()


# Not even a Celery message: kombu decodes these itself, before any Celery hook.
GARBAGE = [b"{not json", b"\x80\x81\xfe", b"", b"[]", b'"a string"', b'{"headers": {}}']


def test_raw_garbage_on_the_queue_is_dead_lettered_and_the_worker_goes_on(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    worker = start_worker(broker, database)
    client = redis.Redis.from_url(broker)
    dlq = DeadLetters(broker)
    try:
        with producer(broker, database) as prod:
            for n, raw in enumerate(GARBAGE):
                # Pushed while the worker is idle, so its BRPOP (not our batching) takes it.
                client.lpush(keys.QUEUE, raw)
                wait_until("taken", lambda: client.llen(keys.QUEUE) == 0, 10)
                op_id = op_id_of(prod.save_state("agent", f"g{n}", {"n": n}))
                for _ in range(60):
                    assert worker.alive(), f"{raw!r} stopped the worker:\n{worker.log()[-2000:]}"
                    with contextlib.suppress(TimeoutError):
                        prod.wait([op_id], timeout=0.5)
                        break
                assert prod.get_state("agent", f"g{n}") == {"n": n}
        records = dlq.list(limit=100)
        assert sorted(r["raw"].encode("utf-8", "replace") for r in records) == sorted(
            raw.decode("utf-8", "replace").encode() for raw in GARBAGE
        )
        assert all(r["error"] for r in records)
    finally:
        dlq.close()
        client.close()
