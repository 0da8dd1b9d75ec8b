"""Deletes, erase, listing and retention: the same behaviour on every backend."""

from __future__ import annotations

import threading
import time

import pytest

from storage import StorageBackend, StorageClient, ValidationError
from storage.ops import make_op
from storage.records import KINDS, Tombstone
from storage.retention import RetentionPolicy
from storage.versions import new_version, normalize_version
from tests.contract.conftest import Backend


def test_delete_each_kind(store: StorageClient, uid: str) -> None:
    store.save_state(uid, "s1", {"n": 1})
    store.save_state(uid, "s2", {"n": 2})
    store.save_task(uid, "t1", {"n": 1})
    store.save_task(uid, "t2", {"n": 2})
    store.save_conversation(uid, {"n": 1})
    store.save_transactions(uid, [{"id": "a"}, {"id": "b"}, {"id": "c"}])

    store.delete_state(uid, "s1")
    store.delete_task(uid, "t2")
    store.delete_transactions(uid, ["b"])
    assert store.get_state(uid, "s1") is None
    assert store.get_state(uid, "s2") == {"n": 2}
    assert store.get_task(uid, "t1") == {"n": 1}
    assert store.get_task(uid, "t2") is None
    assert store.list_states(uid) == ["s2"]
    assert store.list_tasks(uid) == ["t1"]
    assert store.get_transactions(uid) == [{"id": "a"}, {"id": "c"}]

    store.delete_conversation(uid)
    store.delete_transactions(uid)
    assert store.get_conversation_history(uid) == []
    assert store.get_transactions(uid) == []


def test_erase_agent_removes_states_and_tasks_of_that_agent_only(
    store: StorageClient, uid: str
) -> None:
    for n in range(3):
        store.save_state(uid, f"s{n}", {"n": n})
        store.save_task(uid, f"t{n}", {"n": n})
    store.save_state(f"{uid}-other", "s0", {"keep": True})
    store.erase_agent(uid)
    assert store.list_states(uid) == [] and store.list_tasks(uid) == []
    assert all(store.get_state(uid, f"s{n}") is None for n in range(3))
    assert store.get_state(f"{uid}-other", "s0") == {"keep": True}
    store.save_state(uid, "fresh", {"after": True})
    assert store.list_states(uid) == ["fresh"]


def test_deleting_what_does_not_exist_is_fine(store: StorageClient, uid: str) -> None:
    store.delete_state(uid, "never")
    store.delete_task(uid, "never")
    store.delete_conversation(uid)
    store.delete_transactions(uid, ["never"])
    store.delete_transactions(uid)
    store.erase_agent(uid)
    assert store.get_state(uid, "never") is None
    assert store.get_transactions(uid) == []


def test_late_older_saves_stay_deleted_newer_saves_come_back(
    store: StorageClient, uid: str
) -> None:
    before, delete_at, after = new_version(), new_version(), new_version()
    saves_before = [
        make_op(
            "save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 0}}, version=before
        ),
        make_op(
            "save_task", {"agent_id": uid, "task_id": "t", "task_data": {"v": 0}}, version=before
        ),
        make_op(
            "save_state",
            {"agent_id": f"{uid}-e", "state_id": "s", "state": {"v": 0}},
            version=before,
        ),
        make_op("save_conversation", {"conversation_id": uid, "message": {"v": 0}}, version=before),
        make_op(
            "save_transactions", {"case_id": uid, "transactions": [{"id": "x"}]}, version=before
        ),
        make_op(
            "save_transactions",
            {"case_id": f"{uid}-k", "transactions": [{"id": "y"}]},
            version=before,
        ),
    ]
    deletes = [
        make_op("delete_state", {"agent_id": uid, "state_id": "s"}, version=delete_at),
        make_op("delete_task", {"agent_id": uid, "task_id": "t"}, version=delete_at),
        make_op("erase_agent", {"agent_id": f"{uid}-e"}, version=delete_at),
        make_op("delete_conversation", {"conversation_id": uid}, version=delete_at),
        make_op("delete_transactions", {"case_id": uid, "ids": ["x"]}, version=delete_at),
        make_op("delete_transactions", {"case_id": f"{uid}-k"}, version=delete_at),
    ]
    # Deletes applied first, the older saves arrive late (redelivery): nothing comes back.
    store.apply(deletes)
    store.apply(saves_before)
    for op in saves_before:
        store.apply([op])
    assert store.get_state(uid, "s") is None
    assert store.get_task(uid, "t") is None
    assert store.get_state(f"{uid}-e", "s") is None
    assert store.get_conversation_history(uid) == []
    assert store.get_transactions(uid) == []
    assert store.get_transactions(f"{uid}-k") == []
    # In one batch, whatever the order, the delete still wins over the older save.
    store.apply([*saves_before, *deletes, *saves_before])
    assert store.get_state(uid, "s") is None and store.get_conversation_history(uid) == []

    store.save_state(uid, "s", {"v": 2}, version=after)
    store.save_task(uid, "t", {"v": 2}, version=after)
    store.save_state(f"{uid}-e", "s", {"v": 2}, version=after)
    store.save_conversation(uid, {"v": 2}, version=after)
    store.save_transactions(uid, [{"id": "x", "v": 2}], version=after)
    store.save_transactions(f"{uid}-k", [{"id": "y", "v": 2}], version=after)
    assert store.get_state(uid, "s") == {"v": 2}
    assert store.get_task(uid, "t") == {"v": 2}
    assert store.get_state(f"{uid}-e", "s") == {"v": 2}
    assert store.get_conversation_history(uid) == [{"v": 2}]
    assert store.get_transactions(uid) == [{"id": "x", "v": 2}]
    assert store.get_transactions(f"{uid}-k") == [{"id": "y", "v": 2}]


def test_a_delete_older_than_the_stored_save_is_ignored(store: StorageClient, uid: str) -> None:
    older, newer = new_version(), new_version()
    store.save_state(uid, "s", {"v": 1}, version=newer)
    store.delete_state(uid, "s", version=older)
    store.erase_agent(uid, version=older)
    assert store.get_state(uid, "s") == {"v": 1}


def test_erase_racing_with_saves_from_4_threads_ends_consistent(
    store: StorageClient, uid: str
) -> None:
    newest: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()
    erase_version: list[str] = []
    errors: list[BaseException] = []
    go = threading.Barrier(5)

    def saver(thread_no: int) -> None:
        try:
            go.wait(timeout=30)
            for i in range(150):
                key = f"s{i % 10}"
                version = new_version()
                store.save_state(uid, key, {"t": thread_no, "i": i}, version=version)
                with lock:
                    if key not in newest or newest[key][0] < version:
                        newest[key] = (version, thread_no * 1000 + i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    go.wait(timeout=30)
    time.sleep(0.05)
    version = new_version()
    store.erase_agent(uid, version=version)
    erase_version.append(version)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    for key, (saved_at, code) in newest.items():
        expected = None if saved_at < version else {"t": code // 1000, "i": code % 1000}
        assert store.get_state(uid, key) == expected, key
    assert store.list_states(uid) == sorted(k for k, (v, _) in newest.items() if v > version)


def test_list_is_sorted_and_skips_deleted(store: StorageClient, uid: str) -> None:
    names = ["b", "a", "ä", "Z", "10", "9", "🤖"]
    for name in names:
        store.save_state(uid, name, {})
        store.save_task(uid, name, {})
    store.delete_state(uid, "a")
    store.delete_task(uid, "Z")
    assert store.list_states(uid) == sorted(set(names) - {"a"})
    assert store.list_tasks(uid) == sorted(set(names) - {"Z"})
    assert store.list_states(f"{uid}-nobody") == []


def test_bad_delete_input_is_rejected(store: StorageClient, uid: str) -> None:
    with pytest.raises(ValidationError):
        store.delete_state("", "s")
    with pytest.raises(ValidationError):
        store.delete_transactions(uid, "not-a-list")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        store.delete_transactions(uid, ["ok", ""])
    with pytest.raises(ValidationError):
        store.erase_agent(None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        store.list_states("")


# --- retention ---------------------------------------------------------------------------------


def _fresh(backend: Backend) -> StorageBackend:
    client = backend.client()
    assert isinstance(client, StorageBackend)
    return client


def test_retention_keeps_exactly_the_newest_n_messages(backend: Backend) -> None:
    store = _fresh(backend)
    for conversation, count in (("long", 12), ("short", 3)):
        store.apply(
            [
                make_op("save_conversation", {"conversation_id": conversation, "message": {"i": i}})
                for i in range(count)
            ]
        )
    policy = RetentionPolicy(keep_messages=5, batch_size=2)
    before = store.get_conversation_history("long")
    assert store.prune(policy, dry_run=True)["conversations:over_count"] == 7
    assert store.get_conversation_history("long") == before, "dry run changes nothing"
    assert store.prune(policy)["conversations:over_count"] == 7
    assert [m["i"] for m in store.get_conversation_history("long")] == [7, 8, 9, 10, 11]
    assert [m["i"] for m in store.get_conversation_history("short")] == [0, 1, 2]
    assert store.prune(policy)["conversations:over_count"] == 0


# Cosmos DB's `_ts` counts whole seconds: a record may look up to 1 s older than it is.
_TS_SLACK_S = 1.0


def _cutting_at(cutoff: float) -> RetentionPolicy:
    """Ages measured now so that everything written before `cutoff` (epoch s) has expired:
    a prune that runs late (a loaded machine) moves no record across the cut-off."""
    age = time.time() - cutoff
    return RetentionPolicy(
        message_max_age_s=age, finished_task_max_age_s=age, transaction_max_age_s=age
    )


def test_retention_respects_the_age_bound(backend: Backend) -> None:
    store = _fresh(backend)
    store.save_conversation("c", {"old": True})
    store.save_task("a", "done-old", {"status": "done"})
    store.save_task("a", "running-old", {"status": "running"})
    store.save_transactions("k", [{"id": "old"}])
    old_written = time.time()
    # Old records are older than the cut-off, new ones newer even with `_ts` rounded down,
    # with a second's margin on each side for the prune to run late.
    cutoff = old_written + _TS_SLACK_S
    time.sleep(cutoff + _TS_SLACK_S + _TS_SLACK_S - time.time())
    store.save_conversation("c", {"old": False})
    store.save_task("a", "done-new", {"status": "done"})
    store.save_transactions("k", [{"id": "new"}])
    dry = store.prune(_cutting_at(cutoff), dry_run=True)
    assert dry["conversations:expired"] == 1
    assert dry["agent_tasks:expired"] == 1
    assert dry["transactions:expired"] == 1
    assert store.get_conversation_history("c") == [{"old": True}, {"old": False}]
    done = store.prune(_cutting_at(cutoff))
    assert done == {**done, **dry}
    assert store.get_conversation_history("c") == [{"old": False}]
    assert store.list_tasks("a") == ["done-new", "running-old"]
    assert store.get_transactions("k") == [{"id": "new"}]


def test_tombstones_are_cleaned_up_after_the_grace_period(backend: Backend) -> None:
    store = _fresh(backend)
    older = new_version()
    store.save_state("a", "s", {"v": 1})
    store.delete_state("a", "s")
    store.erase_agent("b")
    store.delete_transactions("k", ["x"])

    def tombstone_rows() -> int:
        return sum(r.deleted for kind in KINDS for r in store.scan_records(kind, limit=100))

    assert tombstone_rows() == 2
    assert store.prune(RetentionPolicy(tombstone_grace_s=3600)) == {
        k: 0 for k in store.prune(RetentionPolicy(tombstone_grace_s=3600), dry_run=True)
    }
    deleted = time.time()
    time.sleep(2 * _TS_SLACK_S + 0.2)
    # Every tombstone is older than this grace however late the prune runs, `_ts` included.
    grace = time.time() - deleted - _TS_SLACK_S - 0.1
    counts = store.prune(RetentionPolicy(tombstone_grace_s=grace))
    assert sum(counts.values()) == 3, counts
    assert tombstone_rows() == 0
    # Past the grace period an older save is applied again: the documented trade-off.
    store.save_state("b", "s", {"late": True}, version=older)
    assert store.get_state("b", "s") == {"late": True}


def test_scan_tombstones_pages_every_scope_and_written_elsewhere_they_hold(
    backend: Backend,
) -> None:
    source, target = _fresh(backend), _fresh(backend)
    keys = ["k|1/é", "k2", "k 3"]
    for key in keys:
        source.erase_agent(key, version="0005")
        source.delete_conversation(key, version="0005")
        source.delete_transactions(key, version="0005")
    pages, after = [], None
    for _ in range(10):
        page = source.scan_tombstones(after, limit=2)
        if not page:
            break
        pages.append(page)
        after = page[-1].row_id
    found = [t for page in pages for t in page]
    assert [len(page) for page in pages] == [2, 2, 2, 2, 1]
    assert [t.scope for t in found] == ["agent"] * 3 + ["case"] * 3 + ["conversation"] * 3
    assert sorted((t.scope, t.key) for t in found) == sorted(
        (scope, key) for scope in ("agent", "case", "conversation") for key in keys
    )
    assert source.scan_tombstones(limit=0) == []

    # On the copy they hide older rows, refuse older saves, and never go backwards.
    target.save_state("k2", "s", {"n": 1}, version="0004")
    target.save_conversation("k2", {"n": 1}, version="0004")
    target.save_transactions("k2", [{"id": "t"}], version="0004")
    older = [normalize_version(1), normalize_version(2)]
    target.write_records({}, [Tombstone(t.scope, t.key, older[0]) for t in found])
    target.write_records({}, found)
    target.write_records({}, [Tombstone(t.scope, t.key, older[1]) for t in found])
    assert target.scan_tombstones(limit=100) == found
    target.save_task("k2", "t", {"n": 1}, version="0003")
    target.save_transactions("k2", [{"id": "u"}], version="0005")
    assert target.get_state("k2", "s") is None and target.get_task("k2", "t") is None
    assert target.get_conversation_history("k2") == []
    assert target.get_transactions("k2") == []
    target.save_state("k2", "s", {"n": 2}, version="0006")
    assert target.get_state("k2", "s") == {"n": 2}
