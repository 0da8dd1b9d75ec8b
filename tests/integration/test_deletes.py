"""Deletes, erase and retention through the queue: Producer -> real worker -> PostgreSQL."""

from __future__ import annotations

import threading

from storage.ops import make_op
from storage.versions import new_version
from tests.integration.helpers import producer, wait_until
from tests.plugin import WorkerFactory
from tests.queued import op_id_of


def test_deletes_through_the_queue_stay_deleted_against_late_older_saves(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database)
    with producer(broker, database) as prod:
        old = new_version()
        prod.save_state("a", "keep", {"v": 1})
        prod.save_state("a", "gone", {"v": 1}, version=old)
        prod.save_task("a", "t", {"status": "running"})
        prod.save_conversation("c", {"n": 1})
        prod.save_transactions("k", [{"id": "x"}, {"id": "y"}])
        prod.wait(timeout=30)
        op_ids = [
            op_id_of(prod.delete_state("a", "gone")),
            op_id_of(prod.delete_task("a", "t")),
            op_id_of(prod.delete_conversation("c")),
            op_id_of(prod.delete_transactions("k", ["x"])),
        ]
        prod.wait(op_ids, timeout=30)
        assert prod.get_state("a", "gone") is None
        assert prod.list_states("a") == ["keep"]
        assert prod.list_tasks("a") == []
        assert prod.get_conversation_history("c") == []
        assert prod.get_transactions("k") == [{"id": "y"}]

        # A redelivered save older than the delete arrives late: it must not come back.
        late = make_op(
            "save_state", {"agent_id": "a", "state_id": "gone", "state": {"v": 0}}, version=old
        )
        prod.apply([late])
        prod.wait(timeout=30)
        assert prod.get_state("a", "gone") is None
        prod.save_state("a", "gone", {"v": 2})
        prod.wait(timeout=30)
        assert prod.get_state("a", "gone") == {"v": 2}


def test_erase_racing_with_queued_saves_ends_consistent(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database)
    newest: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()
    erased_at: list[str] = []
    errors: list[BaseException] = []
    with producer(broker, database) as prod:

        def saver(thread_no: int) -> None:
            try:
                for i in range(300):
                    key = f"s{i % 20}"
                    version = new_version()
                    prod.save_state("racer", key, {"n": thread_no * 1000 + i}, version=version)
                    with lock:
                        if key not in newest or newest[key][0] < version:
                            newest[key] = (version, thread_no * 1000 + i)
                    if thread_no == 0 and i == 150:
                        erased_at.append(new_version())
                        prod.erase_agent("racer", version=erased_at[0])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=saver, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors[:3]
        prod.wait(timeout=60)
        for key, (version, n) in newest.items():
            expected = {"n": n} if version > erased_at[0] else None
            assert prod.get_state("racer", key) == expected, key
        alive = sorted(k for k, (v, _) in newest.items() if v > erased_at[0])
        assert prod.list_states("racer") == alive


def test_workers_apply_retention_periodically(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(
        broker,
        database,
        AGENTSTORE_RETAIN_MESSAGES="3",
        AGENTSTORE_PRUNE_INTERVAL_S="0.5",
    )
    with producer(broker, database) as prod:
        for n in range(10):
            prod.save_conversation("chatty", {"n": n})
        prod.wait(timeout=30)
        wait_until(
            "the worker's retention job",
            lambda: len(prod.get_conversation_history("chatty")) == 3,
            timeout=30,
        )
        assert [m["n"] for m in prod.get_conversation_history("chatty")] == [7, 8, 9]
