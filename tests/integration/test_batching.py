"""Cross-message batching in a real worker: single-save messages applied many per commit."""

from __future__ import annotations

import re

from tests.integration.helpers import producer, rows
from tests.plugin import WorkerFactory
from tests.queued import op_id_of


def test_single_save_messages_are_applied_many_per_transaction(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    with producer(broker, database) as prod:
        ids = [op_id_of(prod.save_state("agent", f"s{i}", {"i": i})) for i in range(400)]
        worker = start_worker(broker, database)
        prod.wait(ids, timeout=60)
    assert rows(database, "SELECT count(*) FROM agent_states") == [(400,)]
    batches = [
        (int(ops), int(messages))
        for ops, messages in re.findall(
            r"applied batch: (\d+) ops from (\d+) messages", worker.log()
        )
    ]
    assert sum(ops for ops, _ in batches) >= 400
    assert max(messages for _, messages in batches) > 1, batches
    assert len(batches) < 400, "fewer transactions than messages"
