"""`StorageBackend.count`, the cheap count behind progress totals, agrees with a full scan."""

from __future__ import annotations

from storage.base import StorageBackend
from storage.records import STREAM_KINDS, StreamKind
from tests.contract.conftest import Backend


def scanned(store: StorageBackend, kind: StreamKind) -> int:
    if kind == "tombstone":
        return len(store.scan_tombstones(limit=1_000))
    return len(store.scan_records(kind, limit=1_000))


def test_count_is_what_a_scan_finds_deleted_rows_and_tombstones_included(
    backend: Backend,
) -> None:
    store = backend.client()
    assert isinstance(store, StorageBackend)
    assert {kind: store.count(kind) for kind in STREAM_KINDS} == dict.fromkeys(STREAM_KINDS, 0)
    for n in range(3):
        store.save_state("a", f"s{n}", {"n": n})
        store.save_conversation("c", {"n": n})
    store.save_task("a", "t", {"status": "done"})
    store.delete_state("a", "s0")  # a deleted row, kept with its version
    store.save_transactions("k", [{"id": "x"}, {"id": "y"}])
    store.delete_conversation("gone")  # a partition tombstone
    expected = {"tombstone": 1, "state": 3, "task": 1, "conversation": 3, "transaction": 2}
    expected |= {"checkpoint": 0, "checkpoint_blob": 0, "checkpoint_write": 0}
    assert {kind: scanned(store, kind) for kind in STREAM_KINDS} == expected
    assert {kind: store.count(kind) for kind in STREAM_KINDS} == expected
