"""Hostile payloads through the queue: Producer -> Redis -> a real worker -> store -> read.

The producer refuses at the call (nothing published) exactly what the stores refuse; what
it publishes, the worker applies (never dead-letters) and reads return unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings

from agentstore_cli.launch import CeleryWorker, RedisServer
from broker import keys
from producer import Producer
from storage import StorageClient, ValidationError
from tests.contract.conftest import Backend
from tests.plugin import ROOT, worker_env
from tests.property.strategies import assert_exact, ids, payloads, why_invalid, why_invalid_key


@dataclass
class Queue:
    producer: Producer
    reader: StorageClient
    redis: redis.Redis

    def published(self) -> tuple[int, int]:
        return int(self.redis.get(keys.SEQ_KEY) or 0), int(self.redis.llen(keys.QUEUE))


@pytest.fixture(scope="module", params=["postgres", "cosmos"])
def queue(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Queue]:
    """A real worker on one backend, its producer and a reader; each backend its own Redis db."""
    broker = redis_server.url.rsplit("/", 1)[0] + ("/1" if request.param == "cosmos" else "/2")
    with ExitStack() as stack:
        backend = Backend.of(request, stack)
        store_env = backend.fresh_env()
        env = worker_env(**store_env, CELERY_BROKER_URL=broker)
        log = Path(tmp_path_factory.mktemp("worker")) / f"{request.param}.log"
        worker = stack.enter_context(CeleryWorker(env, log, concurrency=1, cwd=ROOT))
        worker.wait_ready()
        prod = stack.enter_context(Producer(broker_url=broker))
        client = redis.Redis.from_url(broker)
        stack.callback(client.close)
        yield Queue(prod, backend.client(store_env), client)
        assert worker.alive(), worker.log()[-3000:]


def _publish(queue: Queue, reason: str | None, save: Any, *args: Any) -> str | None:
    before = queue.published()
    try:
        op_id: str = save(*args)
    except ValidationError:
        assert reason is not None, "a valid value was refused"
        assert queue.published() == before, "nothing is published"
        return None
    assert reason is None, f"published although invalid: {reason}"
    queue.producer.wait([op_id], timeout=30)  # DeadLetteredError if the worker refused it
    return op_id


@settings(max_examples=25)
@given(payload=payloads)
def test_states_and_messages(queue: Queue, payload: Any) -> None:
    uid, reason = uuid.uuid4().hex, why_invalid(payload)
    if _publish(queue, reason, queue.producer.save_state, uid, "s", payload):
        assert_exact(queue.reader.get_state(uid, "s"), payload)
    if _publish(queue, reason, queue.producer.save_conversation, uid, payload):
        assert_exact(queue.reader.get_conversation_history(uid), [payload])


@settings(max_examples=20)
@given(payload=payloads, txid=ids)
def test_transactions(queue: Queue, payload: Any, txid: Any) -> None:
    uid = uuid.uuid4().hex
    txn = {**payload, "id": txid} if isinstance(payload, dict) else payload
    reason = why_invalid(txn) or (why_invalid_key(uid, txid) if isinstance(payload, dict) else None)
    if _publish(queue, reason, queue.producer.save_transactions, uid, [{"n": 0.5}, txn]):
        got = queue.reader.get_transactions(uid)
        assert len(got) == 2 and got[0]["n"] == 0.5 and isinstance(got[0]["id"], str)
        assert_exact(got[1], txn)
