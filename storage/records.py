"""What a batch of ops writes, as every backend sees it: deduped records and tombstones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias, get_args

from .checkpoint_ops import DeleteThread
from .ids import state_row_id, task_row_id, transaction_row_id
from .ops import (
    DeleteConversation,
    DeleteState,
    DeleteTask,
    DeleteTransactions,
    EraseAgent,
    Op,
    OpName,
    SaveConversation,
    SaveState,
    SaveTask,
    SaveTransactions,
)

Kind: TypeAlias = Literal[
    "state",
    "task",
    "conversation",
    "transaction",
    "checkpoint",
    "checkpoint_blob",
    "checkpoint_write",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
# What export, import and migration carry: partition tombstones first, then every kind.
StreamKind: TypeAlias = Literal[
    "tombstone",
    "state",
    "task",
    "conversation",
    "transaction",
    "checkpoint",
    "checkpoint_blob",
    "checkpoint_write",
]
STREAM_KINDS: tuple[StreamKind, ...] = get_args(StreamKind)
Scope: TypeAlias = Literal["agent", "conversation", "case", "thread"]


@dataclass(frozen=True, slots=True)
class KindSpec:
    """Where every backend keeps one kind of record, and what its fields are called."""

    name: str  # PostgreSQL table, Cosmos DB container, prefix of its retention categories
    partition: str  # the field of its partition: the agent, conversation or case id
    sub_id: str  # the field of its id within the partition (on Cosmos DB items)
    payload: str  # PostgreSQL's payload column (Cosmos DB items keep the payload in `data`)
    scope: Scope  # the partition tombstones that cover it


KIND_SPECS: dict[Kind, KindSpec] = {
    "state": KindSpec("agent_states", "agent_id", "state_id", "state", "agent"),
    "task": KindSpec("agent_tasks", "agent_id", "task_id", "task_data", "agent"),
    "conversation": KindSpec(
        "conversations", "conversation_id", "message_id", "message", "conversation"
    ),
    "transaction": KindSpec("transactions", "case_id", "transaction_id", "transaction", "case"),
    # LangGraph's checkpoints, channel values and pending writes (`storage.checkpoints`).
    "checkpoint": KindSpec("checkpoints", "thread_id", "checkpoint_key", "checkpoint", "thread"),
    "checkpoint_blob": KindSpec("checkpoint_blobs", "thread_id", "blob_key", "blob", "thread"),
    "checkpoint_write": KindSpec(
        "checkpoint_writes", "thread_id", "write_key", "pending_write", "thread"
    ),
}
# Partition tombstones have a table (container) of their own on every backend.
TOMBSTONE_TABLE = "agentstore_tombstones"
# The table (container) of each stream kind: what stores count and retention categories name.
STORED_AS: dict[StreamKind, str] = {
    "tombstone": TOMBSTONE_TABLE,
    **{kind: spec.name for kind, spec in KIND_SPECS.items()},
}


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# building a batch's records 5x slower (one per op in every batch). Nothing mutates one.
@dataclass(slots=True)
class Record:
    """One row to write, as every backend sees it after in-batch dedupe.

    A deleted record is a tombstone row: it keeps its version, so an older save arriving late
    (redelivery, reordering) cannot bring the row back, while a newer save does.
    """

    kind: Kind
    row_id: str
    partition: str
    data: dict[str, Any]
    version: str
    # Sort key within the partition: send order for messages, save order for transactions.
    # "<version> <suffix>": a space sorts below every version character, so "10 x" < "10.5 x".
    position: str
    sub_id: str = ""
    deleted: bool = False


@dataclass(slots=True)
class _Checked:
    op: OpName
    id: str
    version: str
    args: dict[str, Any]  # exactly the fields of the model's `args`

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        """The op's message, as the model's `model_dump` gives it (payloads are JSON)."""
        return {"id": self.id, "version": self.version, "op": self.op, "args": dict(self.args)}


@dataclass(slots=True)
class CheckedSave(_Checked):
    """A save op that `storage.op_check.check_op` checked field by field as its model would,
    without building the model: the record it writes, made at the check, and its fields."""

    record: Record


@dataclass(slots=True)
class CheckedCheckpoint(_Checked):
    """A checkpoint put or pending writes checked as `CheckedSave` is: the rows it writes."""

    records: list[Record]


# What a batch applies: ops as validated by their models, or ops checked without one.
AnyOp: TypeAlias = Op | CheckedSave | CheckedCheckpoint


# Which kinds a partition-wide tombstone covers.
SCOPE_KINDS: dict[Scope, tuple[Kind, ...]] = {
    scope: tuple(kind for kind, spec in KIND_SPECS.items() if spec.scope == scope)
    for scope in get_args(Scope)
}
SCOPE_OF: dict[Kind, Scope] = {kind: spec.scope for kind, spec in KIND_SPECS.items()}
# Deleted transactions sort last, so a later save takes the position it is saved at.
_DELETED_POSITION = "~"


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Everything of `scope` `key` with a version up to `version` (inclusive) is deleted.

    Inclusive on both sides, so the order does not matter at an equal version: a save at the
    tombstone's version is skipped when it comes after and deleted when it came before.
    """

    scope: Scope
    key: str
    version: str

    @property
    def row_id(self) -> str:
        """Where a scan resumes after this tombstone (`StorageBackend.scan_tombstones`)."""
        return f"{self.scope}|{self.key}"


def tombstone_cursor(after: str | None) -> tuple[str, str]:
    """`(scope, key)` of a `Tombstone.row_id` (`("", "")` for None): scopes hold no "|"."""
    scope, _, key = (after or "").partition("|")
    return scope, key


@dataclass(frozen=True, slots=True)
class Plan:
    """What a batch of ops writes: partition tombstones first, then deduped records."""

    records: dict[Kind, list[Record]]
    tombstones: list[Tombstone] = field(default_factory=list)


def save_record(
    kind: Literal["state", "task", "conversation"],
    rid: str,
    partition: str,
    sub_id: str,
    data: dict[str, Any],
    version: str,
) -> Record:
    """The record a save of a state, task or message writes (a message's row id and sub id
    are its op id, and it sorts by version, then op id)."""
    position = f"{version} {rid}" if kind == "conversation" else version
    return Record(kind, rid, partition, data, version, position, sub_id)


def _records_of(op: AnyOp) -> Iterable[Record | Tombstone]:
    if isinstance(op, CheckedSave):
        yield op.record
        return
    if isinstance(op, CheckedCheckpoint):
        yield from op.records
        return
    v = op.version
    if isinstance(op, SaveState):
        a = op.args
        rid = state_row_id(a.agent_id, a.state_id)
        yield save_record("state", rid, a.agent_id, a.state_id, a.state, v)
    elif isinstance(op, SaveTask):
        t = op.args
        rid = task_row_id(t.agent_id, t.task_id)
        yield save_record("task", rid, t.agent_id, t.task_id, t.task_data, v)
    elif isinstance(op, SaveConversation):
        c = op.args
        yield save_record("conversation", op.id, c.conversation_id, op.id, c.message, v)
    elif isinstance(op, SaveTransactions):
        case_id = op.args.case_id
        for index, txn in enumerate(op.args.transactions):
            rid = transaction_row_id(case_id, txn["id"])
            yield Record("transaction", rid, case_id, txn, v, f"{v} {index:05d}", txn["id"])
    elif isinstance(op, DeleteState):
        k = op.args
        rid = state_row_id(k.agent_id, k.state_id)
        yield Record("state", rid, k.agent_id, {}, v, v, k.state_id, deleted=True)
    elif isinstance(op, DeleteTask):
        tk = op.args
        rid = task_row_id(tk.agent_id, tk.task_id)
        yield Record("task", rid, tk.agent_id, {}, v, v, tk.task_id, deleted=True)
    elif isinstance(op, DeleteConversation):
        yield Tombstone("conversation", op.args.conversation_id, v)
    elif isinstance(op, DeleteTransactions):
        case_id, ids = op.args.case_id, op.args.ids
        if ids is None:
            yield Tombstone("case", case_id, v)
        for txn_id in ids or ():
            rid = transaction_row_id(case_id, txn_id)
            data = {"id": txn_id}
            yield Record("transaction", rid, case_id, data, v, _DELETED_POSITION, txn_id, True)
    elif isinstance(op, EraseAgent):
        yield Tombstone("agent", op.args.agent_id, v)
    elif isinstance(op, DeleteThread):
        yield Tombstone("thread", op.args.thread_id, v)
    else:
        yield from checkpoint_records(op)


def plan(ops: Sequence[AnyOp]) -> Plan:
    """What `ops` write: see `collect`."""
    return collect(item for op in ops for item in _records_of(op))


# Where each op of a batch writes: the `key_of` its records and tombstones.
Keys: TypeAlias = list[list[tuple[StreamKind, str]]]


def plan_with_keys(ops: Sequence[AnyOp]) -> tuple[Plan, Keys]:
    """`plan(ops)`, and where each op writes, for `changed`: each op's records built once."""
    flat: list[Record | Tombstone] = []
    keys: Keys = []
    for op in ops:
        if type(op) is CheckedSave:  # most of a batch: one record, built at the check
            rec = op.record
            flat.append(rec)
            keys.append([(rec.kind, rec.row_id)])
        else:
            each = list(_records_of(op))
            flat += each
            keys.append(list(map(key_of, each)))
    return collect(flat), keys


# Imported last: it builds the `Record`s defined above.
from .checkpoints import checkpoint_records  # noqa: E402


def collect(items: Iterable[Record | Tombstone]) -> Plan:
    """Deduped records (see `dedupe`) and the newest tombstone per key, ready to write."""
    recs: list[Record] = []
    newest: dict[tuple[Scope, str], Tombstone] = {}
    for item in items:
        if isinstance(item, Record):
            recs.append(item)
        else:
            old = newest.get((item.scope, item.key))
            if old is None or old.version < item.version:
                newest[(item.scope, item.key)] = item
    return Plan(dedupe(recs), list(newest.values()))


# What one write changed: (stream kind, row id) -> the version it stored there, for each
# record and tombstone it wrote; one whose version lost (an equal or newer one was stored, or
# a newer tombstone covers it) is absent.
Written: TypeAlias = dict[tuple[StreamKind, str], str]


def key_of(item: Record | Tombstone) -> tuple[StreamKind, str]:
    """Where `item` is in a `Written`."""
    return ("tombstone", item.row_id) if isinstance(item, Tombstone) else (item.kind, item.row_id)


# What `StorageBackend.commit` reports for each op: "new", this call stored it; "held", the
# store already held it at exactly its version (a redelivered op that was applied before);
# "stale", its version lost to another (an older op, or one overtaken by a newer save).
Outcome: TypeAlias = Literal["new", "held", "stale"]


def outcomes(
    ops: Sequence[AnyOp],
    written: Written,
    stored: Callable[[list[Record | Tombstone]], Written],
    keys: Keys | None = None,
) -> list[Outcome]:
    """For each of `ops`, "new" if the write of their plan (`written`) stored any of its
    records or its tombstone; else "held" if the store holds one of them at the op's own
    version, which `stored` tells (called once, only if some op wrote nothing, with what
    those ops would have written); else "stale". Of two ops writing one row at the same
    version in one batch, the first is "new" and the other "stale": the first is kept.
    `keys`, if given, are where each op writes (`plan_with_keys`)."""
    if keys is None:
        keys = [list(map(key_of, _records_of(op))) for op in ops]
    left = dict(written)
    result: list[Outcome] = []
    missed: list[tuple[int, list[Record | Tombstone]]] = []
    for i, (op, where) in enumerate(zip(ops, keys, strict=True)):
        if len(where) == 1:  # most ops: what follows, without a list per op
            if left.get(where[0]) == op.version:
                del left[where[0]]
                result.append("new")
                continue
            hits = []
        else:
            hits = [k for k in where if left.get(k) == op.version]
            for k in hits:
                del left[k]
        result.append("new" if hits else "stale")
        if not hits:
            # A row another op of this batch wrote holds that op's save, not this one's.
            items = [item for item in _records_of(op) if key_of(item) not in written]
            missed.append((i, items))
    wanted = [item for _, items in missed for item in items]
    if wanted:
        held = stored(wanted)
        for i, items in missed:
            if any(held.get(key_of(item)) == ops[i].version for item in items):
                result[i] = "held"
    return result


def records(ops: Sequence[AnyOp]) -> dict[Kind, list[Record]]:
    """The deduped records `ops` write, per kind (their tombstones aside)."""
    return plan(ops).records


def dedupe(recs: Iterable[Record]) -> dict[Kind, list[Record]]:
    """Group records per kind, keeping for each row id only the newest version.

    Ties (the same version twice) keep the first, as the stores keep what they hold at an
    equal version: the first save of a version wins, inside a batch as across batches.
    A transaction saved twice keeps its earliest position, so it stays where it was first saved.
    """
    newest: dict[tuple[Kind, str], Record] = {}
    for rec in recs:
        key = (rec.kind, rec.row_id)
        old = newest.get(key)
        if old is None or rec.version > old.version:
            if old is not None and old.position < rec.position:
                rec = replace(rec, position=old.position)
            newest[key] = rec
        elif rec.position < old.position:
            newest[key] = replace(old, position=rec.position)
    grouped: dict[Kind, list[Record]] = {kind: [] for kind in KINDS}
    for rec in newest.values():
        grouped[rec.kind].append(rec)
    return grouped
