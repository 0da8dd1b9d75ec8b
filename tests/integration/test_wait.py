"""`Producer.wait()` against a real redis-server and worker: it reports every dead-lettered
op every time, and never success for ops the broker lost."""

from __future__ import annotations

import time

import pytest
import redis

from broker.deadletters import DeadLetters
from producer import BrokerUnavailableError, DeadLetteredError, LostOpsError
from storage import PostgreSQLClient
from tests.integration.helpers import execute, producer
from tests.plugin import RedisFactory, WorkerFactory
from tests.queued import op_id_of


def test_every_dead_lettered_op_is_reported_on_every_wait_until_replayed(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    PostgreSQLClient(postgres_connection_string=database).close()  # creates the schema
    execute(
        database,
        "ALTER TABLE agent_states ADD CONSTRAINT no_poison CHECK (state_id NOT LIKE 'poison%')",
    )
    start_worker(broker, database)
    with producer(broker, database) as prod:
        poisoned = [op_id_of(prod.save_state("agent", f"poison{i}", {"i": i})) for i in range(3)]
        good = op_id_of(prod.save_state("agent", "fine", {"ok": True}))
        for _ in range(3):
            with pytest.raises(DeadLetteredError) as info:
                prod.wait(timeout=60)
            assert sorted(info.value.op_ids) == sorted(poisoned)
            assert all("no_poison" in e for e in info.value.errors.values())
            assert prod.unconfirmed == 3
            with pytest.raises(DeadLetteredError) as info:
                prod.wait([good, *poisoned], timeout=60)
            assert sorted(info.value.op_ids) == sorted(poisoned)
        assert prod.get_state("agent", "fine") == {"ok": True}

        execute(database, "ALTER TABLE agent_states DROP CONSTRAINT no_poison")
        dlq = DeadLetters(broker)
        try:
            assert dlq.replay(poisoned) == 3
        finally:
            dlq.close()
        prod.wait(timeout=60)
        assert prod.unconfirmed == 0
        assert [prod.get_state("agent", f"poison{i}") for i in range(3)] == [
            {"i": i} for i in range(3)
        ]


@pytest.mark.parametrize("linger_ms", [0, 5])
def test_ops_the_broker_lost_are_named_never_reported_applied(
    broker: str, database: str, start_worker: WorkerFactory, linger_ms: float
) -> None:
    client = redis.Redis.from_url(broker)
    try:
        with producer(broker, database, linger_ms=linger_ms) as prod:
            lost = [op_id_of(prod.save_state("agent", f"s{i}", {"i": i})) for i in range(3)]
            prod.flush()
            client.flushall()  # what a restart without AOF does
            started = time.monotonic()
            with pytest.raises(LostOpsError) as info:
                prod.wait(timeout=30)
            assert info.value.op_ids == lost and lost[0] in str(info.value)
            with pytest.raises(LostOpsError) as info:  # reported, forgotten, still lost
                prod.wait(lost[1:], timeout=30)
            assert info.value.op_ids == lost[1:]
            assert time.monotonic() - started < 20, "known at once, not at the timeout"
            assert prod.unconfirmed == 0
            assert prod.get_state("agent", "s0") is None

            # A confirmed op is reported applied, here and (a durable save, whose message
            # id is its op id) from another producer.
            start_worker(broker, database)
            kept = op_id_of(prod.save_state("agent", "kept", {"kept": True}))
            prod.wait(timeout=60)
            assert prod.get_state("agent", "kept") == {"kept": True}
        if linger_ms == 0:
            with producer(broker, database) as other:
                other.wait([kept], timeout=30)
                assert other.get_state("agent", "kept") == {"kept": True}
    finally:
        client.close()


def test_wait_says_the_broker_is_unreachable(start_redis: RedisFactory, database: str) -> None:
    server = start_redis()
    with producer(server.url, database) as prod:
        op_id = op_id_of(prod.save_state("agent", "s", {}))
        server.kill()
        with pytest.raises(BrokerUnavailableError, match="unreachable") as info:
            prod.wait([op_id], timeout=2)
        assert isinstance(info.value, TimeoutError)
        assert "worker running" not in str(info.value)
