"""A worker waits AGENTSTORE_BATCH_WAIT_MS to fill a batch when the queue runs dry, unless a
reader waits for ops (`wait()`, sync or asyncio): then the batch closes at once."""

from __future__ import annotations

import asyncio
import time

from producer import AsyncProducer
from producer.tracker import HURRY_TTL_MS
from tests.integration.helpers import producer, rows
from tests.plugin import WorkerFactory
from tests.queued import op_id_of

WINDOW_S = 4.0
SLOW_WINDOW = {"AGENTSTORE_BATCH_WAIT_MS": str(int(WINDOW_S * 1000))}


def _stored(database: str, agent_id: str) -> bool:
    return bool(rows(database, "SELECT 1 FROM agent_states WHERE agent_id = %s", (agent_id,)))


def test_a_waiting_reader_closes_the_batch_window(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database, **SLOW_WINDOW)
    with producer(broker, database) as prod:
        prod.wait([op_id_of(prod.save_state("warm", "s", {"v": 0}))], timeout=60)
        time.sleep(2 * HURRY_TTL_MS / 1000)  # that wait's hurry is over
        op_id = op_id_of(prod.save_state("a", "s", {"v": 1}))
        time.sleep(1.0)
        # Nobody waits: the worker holds the save while its window lasts.
        assert not _stored(database, "a")
        started = time.monotonic()
        prod.wait([op_id], timeout=60)
        assert time.monotonic() - started < WINDOW_S / 2
        assert prod.get_state("a", "s") == {"v": 1}


def test_an_asyncio_reader_closes_the_batch_window(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database, **SLOW_WINDOW)

    async def run() -> float:
        async with AsyncProducer(broker_url=broker, postgres_connection_string=database) as store:
            await store.wait([op_id_of(await store.save_state("warm", "s", {"v": 0}))], 60)
            await asyncio.sleep(2 * HURRY_TTL_MS / 1000)
            op_id = op_id_of(await store.save_state("b", "s", {"v": 1}))
            await asyncio.sleep(1.0)
            assert not _stored(database, "b")
            started = time.monotonic()
            await store.wait([op_id], 60)
            took = time.monotonic() - started
            assert await store.get_state("b", "s") == {"v": 1}
            return took

    assert asyncio.run(run()) < WINDOW_S / 2
