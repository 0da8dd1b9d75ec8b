"""The in-memory backend with a log of its applies and failures on demand, for worker tests."""

from __future__ import annotations

from collections.abc import Sequence

from storage import InMemoryStorageClient
from storage.errors import StorageError, TransientStorageError
from storage.records import AnyOp, Outcome


class FlakyStore(InMemoryStorageClient):
    """Fails permanently on the ops in `poison`, transiently `transient_failures` times."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.poison: set[str] = set()
        self.transient_failures = 0

    def commit(self, ops: Sequence[AnyOp]) -> list[Outcome]:
        self.calls.append([op.id for op in ops])
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientStorageError("connection lost")
        bad = [op.id for op in ops if op.id in self.poison]
        if bad:
            raise StorageError(f"cannot store {bad[0]}")
        return super().commit(ops)
