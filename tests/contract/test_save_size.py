"""One save's size is bounded the same way on every backend, before anything is written."""

from __future__ import annotations

import pytest

from storage import StorageClient, ValidationError
from storage.ops import MAX_SAVE_BYTES


def test_transactions_over_the_save_limit_are_refused_and_nothing_is_written(
    store: StorageClient, uid: str
) -> None:
    blob = "x" * 1_900_000
    too_many = [{"id": f"t{i}", "blob": blob} for i in range(MAX_SAVE_BYTES // len(blob) + 1)]
    with pytest.raises(ValidationError, match="limit per save"):
        store.save_transactions(f"case-{uid}", too_many)
    assert store.get_transactions(f"case-{uid}") == []
