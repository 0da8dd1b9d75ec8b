"""The naive baseline: plain Celery, one task per save, each applied with its own `save_state`.

    celery -A bench.naive_worker worker --concurrency 2

What a team would write first: `send_task("naive.save_state", args=[agent_id, state_id,
state])` per save, and a task that opens a store once per process and writes one row per
task (one transaction each). The benchmark compares agentstore's worker against it.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from storage import StorageClient, create_storage_client, load_settings

TASK_NAME = "naive.save_state"
QUEUE = "naive"

app = Celery("naive", broker=os.environ.get("CELERY_BROKER_URL"), set_as_current=False)
app.conf.update(
    task_acks_late=True,
    accept_content=["json"],
    task_serializer="json",
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    worker_send_task_events=False,
)

_store: StorageClient | None = None


def _open(**_: Any) -> None:
    global _store
    _store = create_storage_client(load_settings())


signals.worker_process_init.connect(_open, weak=False)


@app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def save_state(agent_id: str, state_id: str, state: dict[str, Any]) -> None:
    global _store
    if _store is None:
        _open()
    assert _store is not None
    _store.save_state(agent_id, state_id, state)
