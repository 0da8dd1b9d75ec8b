"""The op: one save call as a JSON message, shared by the producer, the worker and every backend.

Wire format: `{"op": "save_state", "args": {...}, "id": "<op id>", "version": "<sortable str>"}`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeAlias

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .errors import ValidationError
from .ids import check_id, row_id
from .payload import encode_payload
from .versions import VERSION_RE, new_version

MAX_TRANSACTIONS_PER_SAVE = 10_000
_OP_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")

Kind: TypeAlias = Literal["state", "task", "conversation", "transaction"]
KINDS: tuple[Kind, ...] = ("state", "task", "conversation", "transaction")


def new_op_id() -> str:
    return os.urandom(16).hex()


def _id(field: str) -> Any:
    return BeforeValidator(lambda v: check_id(field, v))


def _payload(field: str) -> Any:
    def check(value: Any) -> Any:
        encode_payload(field, value)
        return value

    return BeforeValidator(check)


def _check_version(value: object) -> str:
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise ValueError(
            "version must be a sortable string of 1-64 characters from [0-9A-Za-z._:-]"
        )
    return value


def _check_op_id(value: object) -> str:
    if not isinstance(value, str) or not _OP_ID_RE.match(value):
        raise ValueError("op id must be 1-64 characters from [0-9A-Za-z_-]")
    return value


Version = Annotated[str, BeforeValidator(_check_version)]
OpId = Annotated[str, BeforeValidator(_check_op_id)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateArgs(_Strict):
    agent_id: Annotated[str, _id("agent_id")]
    state_id: Annotated[str, _id("state_id")]
    state: Annotated[dict[str, Any], _payload("state")]


class TaskArgs(_Strict):
    agent_id: Annotated[str, _id("agent_id")]
    task_id: Annotated[str, _id("task_id")]
    task_data: Annotated[dict[str, Any], _payload("task_data")]


class ConversationArgs(_Strict):
    conversation_id: Annotated[str, _id("conversation_id")]
    message: Annotated[dict[str, Any], _payload("message")]


def _check_transactions(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ValidationError(f"transactions must be a list, got {type(value).__name__}")
    if len(value) > MAX_TRANSACTIONS_PER_SAVE:
        raise ValidationError(
            f"transactions has {len(value):,} items; the limit per save is "
            f"{MAX_TRANSACTIONS_PER_SAVE:,}"
        )
    for index, txn in enumerate(value):
        encode_payload(f"transactions[{index}]", txn)
        if "id" in txn:
            check_id(f"transactions[{index}]['id']", txn["id"])
    return value


class TransactionsArgs(_Strict):
    case_id: Annotated[str, _id("case_id")]
    transactions: Annotated[list[dict[str, Any]], BeforeValidator(_check_transactions)]


class _OpBase(_Strict):
    id: OpId
    version: Version


class SaveState(_OpBase):
    op: Literal["save_state"]
    args: StateArgs


class SaveTask(_OpBase):
    op: Literal["save_task"]
    args: TaskArgs


class SaveConversation(_OpBase):
    op: Literal["save_conversation"]
    args: ConversationArgs


class SaveTransactions(_OpBase):
    op: Literal["save_transactions"]
    args: TransactionsArgs

    @model_validator(mode="before")
    @classmethod
    def _assign_transaction_ids(cls, data: Any) -> Any:
        # Derived from the op id, so a redelivered op assigns the same ids again.
        if isinstance(data, dict) and isinstance(data.get("args"), dict):
            txns = data["args"].get("transactions")
            if isinstance(txns, list) and any(isinstance(t, dict) and "id" not in t for t in txns):
                assigned = [
                    {**t, "id": f"{data.get('id')}-{i}"}
                    if isinstance(t, dict) and "id" not in t
                    else t
                    for i, t in enumerate(txns)
                ]
                data = {**data, "args": {**data["args"], "transactions": assigned}}
        return data


Op: TypeAlias = Annotated[
    SaveState | SaveTask | SaveConversation | SaveTransactions, Field(discriminator="op")
]
OpName: TypeAlias = Literal["save_state", "save_task", "save_conversation", "save_transactions"]
_adapter: pydantic.TypeAdapter[Op] = pydantic.TypeAdapter(Op)


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"] if p not in _OP_NAMES)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where and where not in msg else msg)
    return "; ".join(parts)


_OP_NAMES = {"save_state", "save_task", "save_conversation", "save_transactions"}


def parse_op(message: object) -> Op:
    """Validate one wire message into an op; raise `ValidationError` saying what is wrong."""
    try:
        return _adapter.validate_python(message)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid op: {_describe(exc)}") from None


def make_op(
    name: OpName, args: dict[str, Any], *, version: str | None = None, op_id: str | None = None
) -> Op:
    """Build and validate an op for a save call; raise `ValidationError` at the call if bad."""
    return parse_op(
        {
            "op": name,
            "args": args,
            "id": op_id or new_op_id(),
            "version": new_version() if version is None else version,
        }
    )


def op_to_message(op: Op) -> dict[str, Any]:
    return op.model_dump(mode="python")


@dataclass(frozen=True, slots=True)
class Record:
    """One row to write, as every backend sees it after in-batch dedupe."""

    kind: Kind
    row_id: str
    partition: str
    data: dict[str, Any]
    version: str
    # Sort key within the partition: send order for messages, save order for transactions.
    # "<version> <suffix>": a space sorts below every version character, so "10 x" < "10.5 x".
    position: str
    sub_id: str = ""


def _records_of(op: Op) -> Iterable[Record]:
    if isinstance(op, SaveState):
        a = op.args
        rid = row_id(("agent_id", a.agent_id), ("state_id", a.state_id))
        yield Record("state", rid, a.agent_id, a.state, op.version, op.version, a.state_id)
    elif isinstance(op, SaveTask):
        t = op.args
        rid = row_id(("agent_id", t.agent_id), ("task_id", t.task_id))
        yield Record("task", rid, t.agent_id, t.task_data, op.version, op.version, t.task_id)
    elif isinstance(op, SaveConversation):
        c = op.args
        position = f"{op.version} {op.id}"
        yield Record(
            "conversation", op.id, c.conversation_id, c.message, op.version, position, op.id
        )
    else:
        case_id = op.args.case_id
        for index, txn in enumerate(op.args.transactions):
            rid = row_id(("case_id", case_id), ("transaction id", txn["id"]))
            position = f"{op.version} {index:05d}"
            yield Record("transaction", rid, case_id, txn, op.version, position, txn["id"])


def records(ops: Sequence[Op]) -> dict[Kind, list[Record]]:
    """Rows to write per kind for `ops`, deduped as `dedupe` does."""
    return dedupe(rec for op in ops for rec in _records_of(op))


def dedupe(recs: Iterable[Record]) -> dict[Kind, list[Record]]:
    """Group records per kind, keeping for each row id only the newest version.

    Ties (the same version twice, e.g. a redelivery) keep the later one; its content is the same.
    A transaction saved twice keeps its earliest position, so it stays where it was first saved.
    """
    newest: dict[tuple[Kind, str], Record] = {}
    for rec in recs:
        key = (rec.kind, rec.row_id)
        old = newest.get(key)
        if old is None or rec.version >= old.version:
            if old is not None and old.position < rec.position:
                rec = replace(rec, position=old.position)
            newest[key] = rec
        elif rec.position < old.position:
            newest[key] = replace(old, position=rec.position)
    grouped: dict[Kind, list[Record]] = {kind: [] for kind in KINDS}
    for rec in newest.values():
        grouped[rec.kind].append(rec)
    return grouped
