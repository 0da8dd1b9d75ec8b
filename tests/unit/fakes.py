"""In-memory stand-ins for unit tests: a StorageClient and fakeredis wiring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.base import StorageClient
from storage.errors import StorageError, TransientStorageError
from storage.ops import Op
from storage.records import plan


class FakeStore(StorageClient):
    """Keeps the newest record per key; can fail permanently on chosen ops or transiently."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Any] = {}
        self.calls: list[list[str]] = []
        self.poison: set[str] = set()
        self.transient_failures = 0
        self.closed = False

    def apply(self, ops: Sequence[Op]) -> None:
        self.calls.append([op.id for op in ops])
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientStorageError("connection lost")
        bad = [op.id for op in ops if op.id in self.poison]
        if bad:
            raise StorageError(f"cannot store {bad[0]}")
        for kind, recs in plan(ops).records.items():
            for rec in recs:
                old = self.rows.get((kind, rec.row_id))
                if old is None or old.version <= rec.version:
                    self.rows[(kind, rec.row_id)] = rec

    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        for (kind, _), rec in self.rows.items():
            if kind == "state" and rec.partition == agent_id and rec.sub_id == state_id:
                return dict(rec.data)
        return None

    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        return None

    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return []

    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        return []

    def list_states(self, agent_id: str) -> list[str]:
        return []

    def list_tasks(self, agent_id: str) -> list[str]:
        return []

    def close(self) -> None:
        self.closed = True
