"""The contract every store implements: four kinds of record, saved idempotently by version."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from .errors import ValidationError
from .ops import Kind, Op, OpName, Record, make_op, records


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValidationError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit


class StorageClient(ABC):
    """Saves and reads agent states, tasks, conversations and transactions.

    Every save is idempotent and ordered by `version` (a sortable string, assigned from a
    hybrid logical clock when omitted): saving the same thing twice is a no-op, and a save
    older than what is stored is ignored. Storage clients apply saves directly and return
    None; the `Producer` publishes them and returns the op id.
    """

    def save_state(
        self, agent_id: str, state_id: str, state: dict[str, Any], *, version: str | None = None
    ) -> str | None:
        """Save the state `state_id` of `agent_id`, replacing an older one."""
        args = {"agent_id": agent_id, "state_id": state_id, "state": state}
        return self._submit("save_state", args, version)

    def save_task(
        self, agent_id: str, task_id: str, task_data: dict[str, Any], *, version: str | None = None
    ) -> str | None:
        """Save the task `task_id` of `agent_id`, replacing an older one."""
        args = {"agent_id": agent_id, "task_id": task_id, "task_data": task_data}
        return self._submit("save_task", args, version)

    def save_conversation(
        self, conversation_id: str, message: dict[str, Any], *, version: str | None = None
    ) -> str | None:
        """Append `message` to the history of `conversation_id` (ordered by version)."""
        args = {"conversation_id": conversation_id, "message": message}
        return self._submit("save_conversation", args, version)

    def save_transactions(
        self, case_id: str, transactions: list[dict[str, Any]], *, version: str | None = None
    ) -> str | None:
        """Save `transactions` under `case_id`; a transaction's `"id"` is its identity.

        A transaction without `"id"` gets one assigned; saving one with a known id updates it.
        """
        args = {"case_id": case_id, "transactions": transactions}
        return self._submit("save_transactions", args, version)

    def _submit(self, name: OpName, args: dict[str, Any], version: str | None) -> str | None:
        self.apply([make_op(name, args, version=version)])
        return None

    @abstractmethod
    def apply(self, ops: Sequence[Op]) -> None:
        """Write `ops` of any kinds together, idempotently; the newest version per key wins.

        PostgreSQL applies them in one transaction. Re-applying any op, or applying them in
        another order, ends in the same stored state.
        """

    @abstractmethod
    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        """The newest saved state, or None."""

    @abstractmethod
    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        """The newest saved task data, or None."""

    @abstractmethod
    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Messages oldest first; with `limit`, the newest `limit` of them, still oldest first."""

    @abstractmethod
    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        """The case's transactions in save order, each with its `"id"`."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the client is unusable afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StorageBackend(StorageClient):
    """A `StorageClient` that writes to a store itself; what the worker and migrations use."""

    def apply(self, ops: Sequence[Op]) -> None:
        """Write `ops` of any kinds together, idempotently; the newest version per key wins.

        PostgreSQL applies them in one transaction. Re-applying any op, or applying them in
        another order, ends in the same stored state.
        """
        self.write_records(records(ops))

    @abstractmethod
    def write_records(self, grouped: dict[Kind, list[Record]]) -> None:
        """Write records deduped per row id (`storage.ops.dedupe`), each only if newer."""

    @abstractmethod
    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        """Up to `limit` stored records of `kind` with row id > `after`, in row id order."""
