"""In-memory backend: the same contract as PostgreSQL and Cosmos DB, in one process's memory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self, TypeAlias

import pydantic_core

from .base import StorageBackend, check_limit, prefix_bounds
from .checkpoints import keeps_first
from .config import Settings
from .errors import StorageError, ValidationError
from .ids import check_id, state_row_id, task_row_id
from .records import (
    KIND_SPECS,
    KINDS,
    SCOPE_KINDS,
    SCOPE_OF,
    TOMBSTONE_TABLE,
    Kind,
    Record,
    Scope,
    StreamKind,
    Tombstone,
    Written,
    key_of,
    tombstone_cursor,
)
from .retention import RetentionPolicy, prune_limits

# The prune categories (`retention.prune_limits`) name the kinds' tables.
_KIND_NAMED: dict[str, Kind] = {spec.name: kind for kind, spec in KIND_SPECS.items()}


@dataclass(frozen=True, slots=True)
class _Row:
    # `meta` is the record without its payload; the payload is kept as JSON text, so what a
    # caller later does to the dict it saved or read never reaches the store, and payloads
    # come back as if serialised (tuples as lists), as from the other backends.
    meta: Record
    text: str
    written: float  # time.time() of the last write, the age retention goes by

    def record(self) -> Record:
        return replace(self.meta, data=self.data())

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.text)
        return data


@dataclass(frozen=True, slots=True)
class _Stamp:
    version: str
    written: float


# kind -> partition (agent, conversation or case id) -> row id -> row
_Rows: TypeAlias = dict[Kind, dict[str, dict[str, _Row]]]


def _merge(current: _Row | None, incoming: _Row) -> _Row | None:
    """What to store over `current` (None: keep it), as PostgreSQL's upserts decide."""
    if current is None:
        return incoming
    old, new = current.meta, incoming.meta
    if new.kind == "conversation":
        return None  # messages are immutable: the first copy stays
    newer = old.version < new.version
    if new.kind != "transaction":
        return (
            incoming
            if newer and not keeps_first(new.kind, old.deleted, new.deleted, incoming.data)
            else None
        )
    # A transaction keeps the place of its first save, whichever version arrives first.
    position = min(old.position, new.position)
    if newer:
        return replace(incoming, meta=replace(new, position=position))
    if position == old.position:
        return None
    return replace(current, meta=replace(old, position=position), written=incoming.written)


class InMemoryStorageClient(StorageBackend):
    """A `StorageClient` that keeps everything in this process's memory, for tests.

    It behaves like the PostgreSQL and Cosmos DB backends (the same contract suite runs on
    all three): saves are idempotent and ordered by version, deletes leave tombstones,
    payloads come back as if they had been stored as JSON. Thread-safe, and a batch
    (`apply`, `write_records`) is atomic: a reader sees all of it or none of it.

    The data lives in this object only: another client, another process (a Celery worker)
    or a restart sees none of it. Use it to test code that takes a `StorageClient`, e.g.
    `client = InMemoryStorageClient()` or `AGENTSTORE_BACKEND=memory`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: _Rows = {kind: {} for kind in KINDS}
        self._tombstones: dict[tuple[Scope, str], _Stamp] = {}
        self._closed = False

    def __repr__(self) -> str:
        with self._lock:
            count = sum(len(rows) for parts in self._rows.values() for rows in parts.values())
        return f"InMemoryStorageClient({count} rows)"

    @classmethod
    def from_settings(cls, settings: Settings, *, create_schema: bool = True) -> Self:
        """A new, empty store: `settings` configure nothing of it."""
        return cls()

    @classmethod
    def describe(cls, settings: Settings) -> str:
        return "in-memory store (this process only)"

    @classmethod
    def identity(cls, settings: Settings) -> tuple[str, ...]:
        return ("memory",)

    # -- writes -----------------------------------------------------------------------------

    def write_records(
        self, grouped: dict[Kind, list[Record]], tombstones: Sequence[Tombstone] = ()
    ) -> Written:
        """Write `tombstones`, then `grouped`, at once (readers never see a part of it)."""
        now = time.time()
        # Serialised before taking the lock: readers wait only for the dict updates.
        incoming = [
            _Row(replace(rec, data={}), pydantic_core.to_json(rec.data).decode(), now)
            for kind in KINDS
            for rec in grouped.get(kind, ())
        ]
        written: Written = {}
        with self._lock:
            self._check_open()
            for tombstone in tombstones:
                if self._bury(tombstone, now):
                    written[key_of(tombstone)] = tombstone.version
            for row in incoming:
                rec = row.meta
                stamp = self._tombstones.get((SCOPE_OF[rec.kind], rec.partition))
                if stamp is not None and rec.version <= stamp.version:
                    continue  # deleted after this save was made: it stays deleted
                rows = self._rows[rec.kind].setdefault(rec.partition, {})
                wanted = _merge(rows.get(rec.row_id), row)
                if wanted is not None:
                    rows[rec.row_id] = wanted
                    written[key_of(rec)] = wanted.meta.version
        return written

    def stored_versions(self, items: Sequence[Record | Tombstone]) -> Written:
        held: Written = {}
        with self._lock:
            self._check_open()
            for item in items:
                if isinstance(item, Tombstone):
                    found = self._tombstones.get((item.scope, item.key))
                    version = None if found is None else found.version
                else:
                    row = self._rows[item.kind].get(item.partition, {}).get(item.row_id)
                    version = None if row is None else row.meta.version
                if version is not None:
                    held[key_of(item)] = version
        return held

    def _bury(self, tombstone: Tombstone, now: float) -> bool:
        """Store `tombstone` and delete what it covers; whether it was newer than the last."""
        key = (tombstone.scope, tombstone.key)
        stamp = self._tombstones.get(key)
        newer = False
        if stamp is None or stamp.version < tombstone.version:
            stamp = self._tombstones[key] = _Stamp(tombstone.version, now)
            newer = True
        for kind in SCOPE_KINDS[tombstone.scope]:
            rows = self._rows[kind].get(tombstone.key, {})
            for row_id in [rid for rid, row in rows.items() if row.meta.version <= stamp.version]:
                del rows[row_id]
        return newer

    # -- reads ------------------------------------------------------------------------------

    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        check_id("agent_id", agent_id)
        check_id("state_id", state_id)
        return self._point_read("state", agent_id, lambda: state_row_id(agent_id, state_id))

    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        check_id("agent_id", agent_id)
        check_id("task_id", task_id)
        return self._point_read("task", agent_id, lambda: task_row_id(agent_id, task_id))

    def _point_read(
        self, kind: Kind, partition: str, row_id: Callable[[], str]
    ) -> dict[str, Any] | None:
        try:
            rid = row_id()
        except ValidationError:
            return None  # too long together to have been saved
        with self._lock:
            self._check_open()
            row = self._rows[kind].get(partition, {}).get(rid)
        return None if row is None or row.meta.deleted else row.data()

    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        check_id("conversation_id", conversation_id)
        limit = check_limit(limit)
        rows = self._live("conversation", conversation_id)
        rows.sort(key=lambda row: row.meta.position)
        if limit is not None:
            rows = rows[len(rows) - limit :] if limit else []
        return [row.data() for row in rows]

    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        check_id("case_id", case_id)
        rows = self._live("transaction", case_id)
        rows.sort(key=lambda row: row.meta.position)
        return [row.data() for row in rows]

    def list_states(self, agent_id: str) -> list[str]:
        check_id("agent_id", agent_id)
        return sorted(row.meta.sub_id for row in self._live("state", agent_id))

    def list_tasks(self, agent_id: str) -> list[str]:
        check_id("agent_id", agent_id)
        return sorted(row.meta.sub_id for row in self._live("task", agent_id))

    def _live(self, kind: Kind, partition: str) -> list[_Row]:
        with self._lock:
            self._check_open()
            rows = self._rows[kind].get(partition, {}).values()
            return [row for row in rows if not row.meta.deleted]

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
        low, high = prefix_bounds(prefix, below)
        rows = [row for row in self._live(kind, partition) if low <= row.meta.row_id < high]
        rows.sort(key=lambda row: row.meta.row_id, reverse=descending)
        return [row.record() for row in rows[: check_limit(limit)]]

    def get_rows(self, kind: Kind, partition: str, row_ids: Sequence[str]) -> list[Record]:
        wanted = set(row_ids)
        return [row.record() for row in self._live(kind, partition) if row.meta.row_id in wanted]

    def scan_tombstones(self, after: str | None = None, limit: int = 500) -> list[Tombstone]:
        limit = check_limit(limit) or 0
        start = tombstone_cursor(after)
        with self._lock:
            self._check_open()
            found = sorted(key for key in self._tombstones if key > start)[:limit]
            return [
                Tombstone(scope, key, self._tombstones[scope, key].version) for scope, key in found
            ]

    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        """Up to `limit` stored records of `kind` with row id > `after`, in row id order.

        Deleted records (tombstone rows) are included, as on the other backends.
        """
        limit = check_limit(limit) or 0
        start = after or ""
        with self._lock:
            self._check_open()
            found = [row for row in self._all(kind) if row.meta.row_id > start]
        found.sort(key=lambda row: row.meta.row_id)
        return [row.record() for row in found[:limit]]

    def _all(self, kind: Kind) -> Iterator[_Row]:
        for rows in self._rows[kind].values():
            yield from rows.values()

    def count(self, kind: StreamKind) -> int:
        """The exact number of stored records of `kind` (deleted rows included), or tombstones."""
        with self._lock:
            self._check_open()
            if kind == "tombstone":
                return len(self._tombstones)
            return sum(len(rows) for rows in self._rows[kind].values())

    # -- retention --------------------------------------------------------------------------

    def _prune_records(self, policy: RetentionPolicy, dry_run: bool) -> dict[str, int]:
        # All at once, under the lock.
        now = time.time()
        counts: dict[str, int] = {}
        with self._lock:
            self._check_open()
            for category, limit in prune_limits(policy).items():
                table, what = category.split(":")
                if table == TOMBSTONE_TABLE:
                    doomed = [k for k, s in self._tombstones.items() if s.written < now - limit]
                    for key in doomed if not dry_run else ():
                        del self._tombstones[key]
                    counts[category] = len(doomed)
                    continue
                kind = _KIND_NAMED[table]
                if what == "over_count":
                    picked = self._over_count(int(limit))
                else:
                    picked = self._aged(kind, what, now - limit, policy.finished_statuses)
                for partition, row_id in picked if not dry_run else ():
                    del self._rows[kind][partition][row_id]
                counts[category] = len(picked)
        return counts

    def _over_count(self, keep: int) -> list[tuple[str, str]]:
        picked: list[tuple[str, str]] = []
        for conversation_id, rows in self._rows["conversation"].items():
            by_age = sorted(rows.values(), key=lambda row: row.meta.position)
            extra = max(0, len(by_age) - keep)
            picked += [(conversation_id, row.meta.row_id) for row in by_age[:extra]]
        return picked

    def _aged(
        self, kind: Kind, what: str, cut: float, statuses: tuple[str, ...]
    ) -> list[tuple[str, str]]:
        def doomed(row: _Row) -> bool:
            if row.written >= cut:
                return False
            if what == "tombstones":
                return row.meta.deleted
            return kind != "task" or row.data().get("status") in statuses

        return [(row.meta.partition, row.meta.row_id) for row in self._all(kind) if doomed(row)]

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the data; the client is unusable afterwards."""
        with self._lock:
            self._closed = True
            self._rows = {kind: {} for kind in KINDS}
            self._tombstones.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("this InMemoryStorageClient is closed; create a new one")
