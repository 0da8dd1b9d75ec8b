"""What the in-memory backend promises beyond the contract suite: atomic batches, isolation."""

from __future__ import annotations

import threading

import pytest

from storage import InMemoryStorageClient, StorageError
from storage.ops import Op, make_op
from storage.versions import new_version

ROWS = 50


def _batch(n: int) -> list[Op]:
    version = new_version()
    return [
        make_op(
            "save_transactions",
            {"case_id": "k", "transactions": [{"id": f"t{i}", "n": n} for i in range(ROWS)]},
            version=version,
        ),
        make_op("save_state", {"agent_id": "a", "state_id": "s", "state": {"n": n}}),
    ]


def test_a_reader_never_sees_part_of_a_batch() -> None:
    store = InMemoryStorageClient()
    store.apply(_batch(0))
    done = threading.Event()
    torn: list[set[int]] = []

    def read() -> None:
        for _ in range(100_000):
            if done.is_set():
                return
            seen = {txn["n"] for txn in store.get_transactions("k")}
            if len(seen) != 1:
                torn.append(seen)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 600):
            store.apply(_batch(n))
            if torn:
                break
    finally:
        done.set()
        reader.join(timeout=60)
    assert not torn, f"a read saw two batches at once: {torn[0]}"
    assert store.get_state("a", "s") == {"n": 599}


def test_each_client_is_a_store_of_its_own_and_closing_it_ends_it() -> None:
    first, second = InMemoryStorageClient(), InMemoryStorageClient()
    first.save_state("a", "s", {"x": 1})
    assert second.get_state("a", "s") is None
    assert "1 rows" in repr(first)
    first.close()
    first.close()  # closing twice is fine
    with pytest.raises(StorageError, match="closed"):
        first.get_state("a", "s")
    with pytest.raises(StorageError, match="closed"):
        first.save_state("a", "s", {"x": 2})
