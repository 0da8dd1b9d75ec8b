"""`commit` tells, on every backend, which ops changed the store: what the worker counts as
applied, and as stale (version lost) when a redelivered op is applied again."""

from __future__ import annotations

from typing import Any

from storage import StorageClient
from storage.base import StorageBackend
from storage.ops import Op, OpName, make_op


def _op(name: OpName, args: dict[str, Any], version: int) -> Op:
    return make_op(name, args, version=version)


def test_commit_reports_each_op_that_changed_the_store(store: StorageClient, uid: str) -> None:
    assert isinstance(store, StorageBackend)
    ops = [
        _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 1}}, 10),
        _op("save_task", {"agent_id": uid, "task_id": "t", "task_data": {"v": 1}}, 10),
        _op("save_conversation", {"conversation_id": uid, "message": {"m": 1}}, 10),
        _op("save_transactions", {"case_id": uid, "transactions": [{"id": "a"}, {"id": "b"}]}, 10),
        _op("delete_conversation", {"conversation_id": f"{uid}-gone"}, 10),
    ]
    assert store.commit(ops) == [True] * len(ops)
    assert store.commit(ops) == [False] * len(ops), "applied again: every version lost"
    older = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 0}}, 9)
    newer = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 2}}, 11)
    assert store.commit([older, newer]) == [False, True]
    assert store.get_state(uid, "s") == {"v": 2}


def test_commit_counts_one_of_two_equal_ops_in_a_batch(store: StorageClient, uid: str) -> None:
    assert isinstance(store, StorageBackend)
    first = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 1}}, 5)
    again = _op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 2}}, 5)
    erase = _op("erase_agent", {"agent_id": uid}, 4)
    assert store.commit([first, again, erase]) == [True, False, True]
    assert store.get_state(uid, "s") == {"v": 1}
