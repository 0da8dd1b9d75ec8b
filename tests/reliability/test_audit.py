"""The soak's audit finds each kind of failure it reports: it is the soak's only assertion."""

from __future__ import annotations

from storage import PostgreSQLClient
from storage.ops import make_op
from storage.versions import normalize_version as _v
from tests.reliability.audit import audit
from tests.reliability.ledger import Kind, Save


def _save(kind: Kind, owner: str, sub: str, v: str, payload: object, seq: int) -> Save:
    return Save(kind, owner, sub, v, payload, f"op{seq}", 0, seq)


def test_audit_counts_lost_stale_duplicated_out_of_order_and_foreign(database: str) -> None:
    msg = {n: {"t": 0, "n": n} for n in range(1, 5)}
    txn = [{"id": "tx-1", "t": 0, "n": 9, "i": 0}]
    saves = [
        _save("state", "a", "s1", _v(1), {"n": 1}, 1),
        _save("state", "a", "s1", _v(2), {"n": 2}, 2),  # acknowledged, never applied: stale
        _save("state", "a", "s2", _v(1), {"n": 3}, 3),  # acknowledged, nothing stored: lost
        _save("task", "a", "t1", _v(0), {"n": 4}, 4),
        *(_save("conversation", "c", "", _v(n), msg[n], n) for n in range(1, 5)),
        _save("transaction", "case", "", _v(5), txn, 9),
    ]
    ops = [
        make_op("save_state", {"agent_id": "a", "state_id": "s1", "state": {"n": 1}}, version=1),
        make_op(
            "save_task",
            {"agent_id": "a", "task_id": "t1", "task_data": saves[3].payload},
            version=0,
        ),
        # Never saved by anyone: foreign.
        make_op("save_state", {"agent_id": "z", "state_id": "s", "state": {"n": 0}}, version=1),
        make_op("save_conversation", {"conversation_id": "c", "message": msg[1]}, version=1),
        # Message 2 stored after message 3: one inversion.
        make_op("save_conversation", {"conversation_id": "c", "message": msg[2]}, version=9),
        make_op("save_conversation", {"conversation_id": "c", "message": msg[3]}, version=3),
        # Message 4 stored twice under two op ids: one duplicate.
        make_op("save_conversation", {"conversation_id": "c", "message": msg[4]}, version=4),
        make_op("save_conversation", {"conversation_id": "c", "message": msg[4]}, version=4),
        make_op("save_transactions", {"case_id": "case", "transactions": txn}, version=5),
    ]
    with PostgreSQLClient(postgres_connection_string=database) as store:
        store.apply(ops)
    result = audit(saves, database)
    assert (result.sent, result.acked) == (9, 9)
    assert result.lost == 1 and result.stale == 1 and result.foreign == 1
    assert result.duplicated == 1 and result.out_of_order >= 1
    assert result.applied == 9 - 2, "every save but the lost one and the stale one"
    assert not result.clean and len(result.problems) == 5


def test_audit_of_everything_applied_is_clean(database: str) -> None:
    saves = [_save("state", "a", "s", _v(n), {"n": n}, n) for n in range(3)]
    with PostgreSQLClient(postgres_connection_string=database) as store:
        store.save_state("a", "s", {"n": 2}, version=2)
    result = audit(saves, database)
    assert result.clean and result.applied == 3
