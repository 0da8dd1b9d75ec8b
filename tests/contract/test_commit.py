"""`commit` tells, on every backend, what became of each op: "new" (it changed the store),
"held" (the store already held it at its version: a redelivered op applied before) or
"stale" (its version lost). The worker counts "new" and "held" as applied."""

from __future__ import annotations

from typing import Any

from storage import StorageClient
from storage.base import StorageBackend
from storage.ops import Op, OpName, make_op


def _op(name: OpName, args: dict[str, Any], version: int) -> Op:
    return make_op(name, args, version=version)


def test_commit_reports_new_then_held_then_stale(store: StorageClient, uid: str) -> None:
    assert isinstance(store, StorageBackend)
    ops = [
        _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 1}}, 10),
        _op("save_task", {"agent_id": uid, "task_id": "t", "task_data": {"v": 1}}, 10),
        _op("save_conversation", {"conversation_id": uid, "message": {"m": 1}}, 10),
        _op("save_transactions", {"case_id": uid, "transactions": [{"id": "a"}, {"id": "b"}]}, 10),
        _op("delete_conversation", {"conversation_id": f"{uid}-gone"}, 10),
        _op("delete_task", {"agent_id": uid, "task_id": "gone"}, 10),
        _op("erase_agent", {"agent_id": f"{uid}-erased"}, 10),
    ]
    assert store.commit(ops) == ["new"] * len(ops)
    assert store.commit(ops) == ["held"] * len(ops), "redelivered: already stored as is"
    older = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 0}}, 9)
    newer = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 2}}, 11)
    assert store.commit([older, newer]) == ["stale", "new"]
    assert store.get_state(uid, "s") == {"v": 2}
    assert store.commit(ops[:1]) == ["stale"], "redelivered after a newer save: lost"


def test_commit_of_ops_a_tombstone_covers_is_stale(store: StorageClient, uid: str) -> None:
    assert isinstance(store, StorageBackend)
    save = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 1}}, 5)
    assert store.commit([save]) == ["new"]
    assert store.commit([_op("erase_agent", {"agent_id": uid}, 6)]) == ["new"]
    assert store.commit([save]) == ["stale"], "its row was erased after it"


def test_commit_counts_one_of_two_equal_ops_in_a_batch(store: StorageClient, uid: str) -> None:
    assert isinstance(store, StorageBackend)
    first = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 1}}, 5)
    again = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 2}}, 5)
    erase = _op("erase_agent", {"agent_id": uid}, 4)
    assert store.commit([first, again, erase]) == ["new", "stale", "new"]
    assert store.get_state(uid, "s") == {"v": 1}
    # Across batches, a store keeps no op id per row: another op of the very same version
    # looks like a redelivery. Versions from the clock are unique per save.
    assert store.commit([again]) == ["held"]
