"""The contract every store implements: four kinds of record, saved idempotently by version."""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .config import Settings
from .errors import ValidationError
from .ops import Op, OpName, make_op
from .records import (
    AnyOp,
    Kind,
    Outcome,
    Record,
    StreamKind,
    Tombstone,
    Written,
    outcomes,
    plan_with_keys,
)
from .retention import RetentionPolicy

if TYPE_CHECKING:
    from .checkpoint_reads import Loaded, Wanted

# No store holds more rows than this (PostgreSQL's bigint): a larger limit means all of them.
_MAX_LIMIT = 2**63 - 1


def prefix_bounds(prefix: str, below: str | None) -> tuple[str, str]:
    """`[low, high)` row ids starting with `prefix` (ending with "|") and below `below`."""
    if not prefix.endswith("|"):
        raise ValueError(f"a row id prefix ends with '|', got {prefix!r}")
    high = prefix[:-1] + "}"  # the character after "|": above every id with this prefix
    return prefix, high if below is None else min(high, below)


def check_limit(limit: object) -> int | None:
    """`limit` as a plain int (None: no limit), or `ValidationError`.

    Any `numbers.Integral` but bool is accepted (e.g. a numpy integer); limits above what a
    store can hold are clamped, since PostgreSQL refuses integers beyond a bigint.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0:
        raise ValidationError(f"limit must be a non-negative int or None, got {limit!r}")
    return min(int(limit), _MAX_LIMIT)


class StorageClient(ABC):
    """Saves and reads agent states, tasks, conversations and transactions.

    Every save is idempotent and ordered by `version` (an integer, or assigned from a
    hybrid logical clock when omitted; see `storage.versions.normalize_version`): saving
    the same thing twice is a no-op, a save older than what is stored is ignored, and of
    two saves of the same version the first applied stays. Storage clients apply saves
    directly and return None; the `Producer` publishes them and returns the op id.
    """

    def save_state(
        self,
        agent_id: str,
        state_id: str,
        state: dict[str, Any],
        *,
        version: str | int | None = None,
    ) -> str | None:
        """Save the state `state_id` of `agent_id`, replacing an older one."""
        args = {"agent_id": agent_id, "state_id": state_id, "state": state}
        return self._submit("save_state", args, version)

    def save_task(
        self,
        agent_id: str,
        task_id: str,
        task_data: dict[str, Any],
        *,
        version: str | int | None = None,
    ) -> str | None:
        """Save the task `task_id` of `agent_id`, replacing an older one."""
        args = {"agent_id": agent_id, "task_id": task_id, "task_data": task_data}
        return self._submit("save_task", args, version)

    def save_conversation(
        self, conversation_id: str, message: dict[str, Any], *, version: str | int | None = None
    ) -> str | None:
        """Append `message` to the history of `conversation_id` (ordered by version)."""
        args = {"conversation_id": conversation_id, "message": message}
        return self._submit("save_conversation", args, version)

    def save_transactions(
        self, case_id: str, transactions: list[dict[str, Any]], *, version: str | int | None = None
    ) -> str | None:
        """Save `transactions` under `case_id`; a transaction's `"id"` is its identity.

        A transaction without `"id"` gets one assigned; saving one with a known id updates it.
        """
        args = {"case_id": case_id, "transactions": transactions}
        return self._submit("save_transactions", args, version)

    def delete_state(
        self, agent_id: str, state_id: str, *, version: str | int | None = None
    ) -> str | None:
        """Delete one state; a save older than this delete will not bring it back."""
        return self._submit("delete_state", {"agent_id": agent_id, "state_id": state_id}, version)

    def delete_task(
        self, agent_id: str, task_id: str, *, version: str | int | None = None
    ) -> str | None:
        """Delete one task; a save older than this delete will not bring it back."""
        return self._submit("delete_task", {"agent_id": agent_id, "task_id": task_id}, version)

    def delete_conversation(
        self, conversation_id: str, *, version: str | int | None = None
    ) -> str | None:
        """Delete the whole history of `conversation_id` (messages older than this delete)."""
        return self._submit("delete_conversation", {"conversation_id": conversation_id}, version)

    def delete_transactions(
        self, case_id: str, ids: list[str] | None = None, *, version: str | int | None = None
    ) -> str | None:
        """Delete the given transaction ids of `case_id`, or all of them when `ids` is None."""
        return self._submit("delete_transactions", {"case_id": case_id, "ids": ids}, version)

    def erase_agent(self, agent_id: str, *, version: str | int | None = None) -> str | None:
        """Delete every state and task of `agent_id` older than this call."""
        return self._submit("erase_agent", {"agent_id": agent_id}, version)

    def _submit(self, name: OpName, args: dict[str, Any], version: str | int | None) -> str | None:
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
    def list_states(self, agent_id: str) -> list[str]:
        """The state ids of `agent_id` that exist (not deleted), sorted."""

    @abstractmethod
    def list_tasks(self, agent_id: str) -> list[str]:
        """The task ids of `agent_id` that exist (not deleted), sorted."""

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
    """A `StorageClient` that writes to a store itself; what the worker and migrations use.

    Each backend is registered once in `storage.backends`, which selects it from settings and
    asks its class to describe and identify the store those settings configure.
    """

    @classmethod
    def from_settings(cls, settings: Settings, *, create_schema: bool = True) -> Self:
        """A client of the store `settings` configure (see `storage.create_storage_client`)."""
        raise NotImplementedError

    @classmethod
    def describe(cls, settings: Settings) -> str:
        """The store `settings` configure for this backend, for humans, every secret masked."""
        raise NotImplementedError

    @classmethod
    def identity(cls, settings: Settings) -> tuple[str, ...]:
        """What makes two configurations the same store, holding no secret: equal tuples are
        one store (a server reached by loopback name, address or socket is one server)."""
        raise NotImplementedError

    @classmethod
    def secrets(cls, settings: Settings) -> list[str]:
        """The secrets `settings` hold for this backend, for error messages to scrub."""
        return []

    def count(self, kind: StreamKind) -> int | None:
        """A cheap count of the stored records of `kind` (or tombstones), for progress totals;
        None when the store has no cheap count. Exact counts go through `scan_records`."""
        return None

    def apply(self, ops: Sequence[AnyOp]) -> None:
        """Write `ops` of any kinds together, idempotently; the newest version per key wins.

        PostgreSQL applies them in one transaction. Re-applying any op, or applying them in
        another order, ends in the same stored state.
        """
        self.commit(ops)

    def commit(self, ops: Sequence[AnyOp]) -> list[Outcome]:
        """`apply(ops)`, telling for each op what became of it (`storage.records.Outcome`):
        "new" if it changed the store, "held" if the store already held it at its version
        (a redelivered op applied before), "stale" if its version lost. What the worker
        counts as applied ("new" and "held") vs stale. The store is asked what it holds
        only when some op wrote nothing: a batch of new ops costs no extra query."""
        batch, keys = plan_with_keys(ops)
        written = self.write_records(batch.records, batch.tombstones)
        return outcomes(ops, written, self.stored_versions, keys)

    @abstractmethod
    def stored_versions(self, items: Sequence[Record | Tombstone]) -> Written:
        """The version the store holds at the row of each record (deleted rows too) and for
        each tombstone's scope and key; absent where it holds none. Read after the write,
        outside its transaction: a newer save landing in between makes a redelivered op
        look stale (see `worker.metrics`)."""

    @abstractmethod
    def write_records(
        self, grouped: dict[Kind, list[Record]], tombstones: Sequence[Tombstone] = ()
    ) -> Written:
        """Write `tombstones`, then records deduped per row id (`storage.records.dedupe`);
        return the ones this call stored, with their versions (`storage.records.Written`).

        A record is written only if it is newer than the stored one and than any tombstone
        of its partition; a tombstone deletes its partition's older rows at once.
        """

    @abstractmethod
    def read_rows(
        self,
        kind: Kind,
        partition: str,
        prefix: str,
        *,
        below: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[Record]:
        """Live records of `kind` in `partition` whose row id starts with `prefix` (which ends
        with "|") and, with `below`, sorts before it; in row id order, at most `limit`."""

    @abstractmethod
    def get_rows(self, kind: Kind, partition: str, row_ids: Sequence[str]) -> list[Record]:
        """The live records of `kind` in `partition` among `row_ids`, in no particular order."""

    def load_checkpoints(self, wanted: Wanted) -> list[Loaded]:
        """LangGraph checkpoints of one thread with their blobs and pending writes, newest
        first (`storage.checkpoint_reads.Wanted` says which). A store that can read them in
        one round trip overrides this; the default uses the row reads above."""
        from . import checkpoint_reads  # imported here for the reason given in `prune`

        return checkpoint_reads.load(self, wanted)

    def prune(self, policy: RetentionPolicy, *, dry_run: bool = False) -> dict[str, int]:
        """Remove what `policy` no longer keeps, in bounded batches; counts per category.

        With `dry_run`, only count. Safe to run from several processes at once. LangGraph
        checkpoints beyond `policy.keep_checkpoints` go as `AgentStoreSaver.prune` drops
        them (`storage.checkpoint_prune.retain`).
        """
        # Imported here: `storage.checkpoints` and `storage.records` import each other, which
        # works only when `records` is imported first, as this module does.
        from . import checkpoint_prune

        counts = self._prune_records(policy, dry_run)
        if policy.keep_checkpoints is not None:
            # The rows LangGraph's checkpointer's own prune chooses, deleted by the same op.
            keep, batch = policy.keep_checkpoints, policy.batch_size
            counts.update(checkpoint_prune.retain(self, keep, batch=batch, dry_run=dry_run))
        return counts

    @abstractmethod
    def _prune_records(self, policy: RetentionPolicy, dry_run: bool) -> dict[str, int]:
        """`prune` of every category `storage.retention.prune_limits(policy)` names."""

    @abstractmethod
    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        """Up to `limit` stored records of `kind` with row id > `after`, in row id order."""

    @abstractmethod
    def scan_tombstones(self, after: str | None = None, limit: int = 500) -> list[Tombstone]:
        """Up to `limit` stored partition tombstones after the one whose `row_id` is `after`,
        in (scope, key) order: what export and migration carry besides the records."""
