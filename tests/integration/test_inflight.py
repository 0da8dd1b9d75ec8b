"""A message being applied is never republished, however long its batch takes; a killed
worker's message still is."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg2
import redis

from broker import keys
from tests.integration.helpers import pending, producer, wait_until
from tests.plugin import WorkerFactory
from tests.queued import op_id_of

# The worker's apply blocks on the test's table lock four recovery periods long.
RECOVERY = {
    "AGENTSTORE_RECOVERY_AFTER_S": "2",
    "AGENTSTORE_REAPER_INTERVAL_S": "0.2",
    "AGENTSTORE_BATCH_WAIT_MS": "0",
}
BLOCKED_S = 8.0


@contextlib.contextmanager
def states_locked(database: str) -> Iterator[None]:
    """No write reaches `agent_states` until the block ends (reads still do)."""
    conn = psycopg2.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE agent_states IN EXCLUSIVE MODE")
        yield
        conn.commit()
    finally:
        conn.close()


def _applied(client: redis.Redis) -> int:
    return int(client.get(keys.APPLIED_KEY) or 0)


def _blocked(client: redis.Redis) -> bool:
    """The one pending message has left the queue: a worker is applying it."""
    return client.llen(keys.QUEUE) == 0 and pending(client) == 1


def test_a_batch_slower_than_the_recovery_period_is_not_republished(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    client = redis.Redis.from_url(broker)
    worker = start_worker(broker, database, **RECOVERY)
    with producer(broker, database) as prod:
        prod.wait([op_id_of(prod.save_state("a", "s", {"v": 0}))], timeout=60)
        with states_locked(database):
            op_id = op_id_of(prod.save_state("a", "s", {"v": 1}))
            wait_until("the worker to take the save", lambda: _blocked(client), 30)
            # Four recovery periods, with a reaper round every 0.2 s, to push it back.
            time.sleep(BLOCKED_S)
            assert "republished" not in worker.log()
        prod.wait([op_id], timeout=60)
        assert prod.get_state("a", "s") == {"v": 1}
    assert _applied(client) == 2, "each save applied exactly once"
    assert "republished" not in worker.log()


def test_a_killed_workers_slow_batch_is_still_recovered(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    client = redis.Redis.from_url(broker)
    first = start_worker(broker, database, **RECOVERY)
    with producer(broker, database) as prod:
        prod.wait([op_id_of(prod.save_state("a", "s", {"v": 0}))], timeout=60)
        with states_locked(database):
            op_id = op_id_of(prod.save_state("a", "s", {"v": 1}))
            wait_until("the worker to take the save", lambda: _blocked(client), 30)
            time.sleep(1.0)  # a few heartbeats
            first.kill()
            second = start_worker(broker, database, **RECOVERY)
            # Heartbeats stopped with the process: the lease lapses, the reaper pushes it back.
            wait_until("the reaper to republish", lambda: "republished" in second.log(), 60, 0.2)
        prod.wait([op_id], timeout=60)
        assert prod.get_state("a", "s") == {"v": 1}
