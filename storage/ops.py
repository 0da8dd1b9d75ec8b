"""The op: one save call as a JSON message, shared by the producer, the worker and every backend.

Wire format: `{"op": "save_state", "args": {...}, "id": "<op id>", "version": "<sortable str>"}`.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Annotated, Any, Literal, TypeAlias, get_args

import pydantic
from pydantic import BeforeValidator, Field, model_validator

from . import forks
from .checkpoint_ops import DeleteCheckpointRows, DeleteThread, PutCheckpoint, PutWrites
from .errors import ValidationError
from .ids import MAX_ID_CHARS, check_id, row_id, state_row_id, task_row_id, transaction_row_id
from .op_base import PLAIN
from .op_base import OpBase as _OpBase
from .op_base import Strict as _Strict
from .op_base import check_op_id as _check_op_id
from .op_base import id_field as _id
from .op_base import payload_field as _payload
from .payload import encode_payload
from .versions import new_version, normalize_version

MAX_TRANSACTIONS_PER_SAVE = 10_000
# One save's transactions as JSON, at most: what a worker holds (several times over, while
# decoding) for one op, and what one task message carries at most (the producer packs
# several ops into one message only up to 4,000,000 characters, i.e. at most this).
MAX_SAVE_BYTES = 16_000_000


class _OpIds:
    """32 hex digits: 64 random bits per process, then a counter; unique without a syscall each.

    A forked child draws a new prefix, so it never repeats its parent's ids.
    """

    def __init__(self) -> None:
        self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_op_ids = _OpIds()
forks.watch(_op_ids)


def new_op_id() -> str:
    return _op_ids.new()


# Row ids are checked at the call too: ids that are fine alone can be too long together.
class StateKey(_Strict):
    agent_id: Annotated[str, _id("agent_id")]
    state_id: Annotated[str, _id("state_id")]

    @model_validator(mode="after")
    def _fits(self) -> StateKey:
        state_row_id(self.agent_id, self.state_id)
        return self


class StateArgs(StateKey):
    state: Annotated[dict[str, Any], _payload("state")]


class TaskKey(_Strict):
    agent_id: Annotated[str, _id("agent_id")]
    task_id: Annotated[str, _id("task_id")]

    @model_validator(mode="after")
    def _fits(self) -> TaskKey:
        task_row_id(self.agent_id, self.task_id)
        return self


class TaskArgs(TaskKey):
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
    size = 0
    for index, txn in enumerate(value):
        text = encode_payload(f"transactions[{index}]", txn)
        size += len(text) + 1 if text.isascii() else len(text.encode()) + 1
        if size > MAX_SAVE_BYTES:
            raise ValidationError(
                f"transactions are over {MAX_SAVE_BYTES:,} bytes as JSON together (at item "
                f"{index}); that is the limit per save: split them over several saves"
            )
        if "id" in txn:
            check_id(f"transactions[{index}]['id']", txn["id"])
    return value


class TransactionsArgs(_Strict):
    case_id: Annotated[str, _id("case_id")]
    transactions: Annotated[list[dict[str, Any]], BeforeValidator(_check_transactions)]

    @model_validator(mode="after")
    def _fits(self) -> TransactionsArgs:
        for txn in self.transactions:
            transaction_row_id(self.case_id, txn["id"])
        return self


class ConversationKey(_Strict):
    conversation_id: Annotated[str, _id("conversation_id")]


def _check_transaction_ids(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValidationError(f"ids must be a list of strings or None, got {type(value).__name__}")
    if len(value) > MAX_TRANSACTIONS_PER_SAVE:
        raise ValidationError(
            f"ids has {len(value):,} items; the limit per call is {MAX_TRANSACTIONS_PER_SAVE:,}"
        )
    return [check_id(f"ids[{index}]", txn_id) for index, txn_id in enumerate(value)]


class TransactionsKey(_Strict):
    case_id: Annotated[str, _id("case_id")]
    ids: Annotated[list[str] | None, BeforeValidator(_check_transaction_ids)] = None

    @model_validator(mode="after")
    def _fits(self) -> TransactionsKey:
        for txn_id in self.ids or ():
            transaction_row_id(self.case_id, txn_id)
        return self


class AgentKey(_Strict):
    agent_id: Annotated[str, _id("agent_id")]


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


class DeleteState(_OpBase):
    op: Literal["delete_state"]
    args: StateKey


class DeleteTask(_OpBase):
    op: Literal["delete_task"]
    args: TaskKey


class DeleteConversation(_OpBase):
    op: Literal["delete_conversation"]
    args: ConversationKey


class DeleteTransactions(_OpBase):
    op: Literal["delete_transactions"]
    args: TransactionsKey


class EraseAgent(_OpBase):
    op: Literal["erase_agent"]
    args: AgentKey


Op: TypeAlias = Annotated[
    SaveState
    | SaveTask
    | SaveConversation
    | SaveTransactions
    | DeleteState
    | DeleteTask
    | DeleteConversation
    | DeleteTransactions
    | EraseAgent
    | PutCheckpoint
    | PutWrites
    | DeleteThread
    | DeleteCheckpointRows,
    Field(discriminator="op"),
]
OpName: TypeAlias = Literal[
    "save_state",
    "save_task",
    "save_conversation",
    "save_transactions",
    "delete_state",
    "delete_task",
    "delete_conversation",
    "delete_transactions",
    "erase_agent",
    "put_checkpoint",
    "put_writes",
    "delete_thread",
    "delete_checkpoint_rows",
]
_adapter: pydantic.TypeAdapter[Op] = pydantic.TypeAdapter(Op)


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"] if p not in _OP_NAMES and p != "args")
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where and where not in msg else msg)
    return "; ".join(parts)


_OP_NAMES: set[str] = set(get_args(OpName))


def parse_op(message: object, *, plain_payload: bool = False) -> Op:
    """Validate one wire message into an op; raise `ValidationError` saying what is wrong.

    `plain_payload` says the message was decoded from a JSON text that
    `storage.payload.decode_plain` found plain: it vouched for the op's payload
    (`payload_field`). Every other check runs.
    """
    try:
        return _adapter.validate_python(message, context=PLAIN if plain_payload else None)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid op: {_describe(exc)}") from None


def _call_version(name: str, version: object) -> str:
    """The version of a call: a new one when omitted, else the caller's, normalized."""
    if version is None:
        return new_version()
    try:
        return normalize_version(version)
    except ValidationError as exc:
        raise ValidationError(f"{name}: {exc}") from None


def make_op(
    name: OpName,
    args: dict[str, Any],
    *,
    version: str | int | None = None,
    op_id: str | None = None,
) -> Op:
    """Build and validate an op for a save call; raise `ValidationError` at the call if bad.

    `version` is normalized by `storage.versions.normalize_version` (integers compare as
    numbers); omitted, it comes from this process's hybrid logical clock.
    """
    message = {
        "op": name,
        "args": args,
        "id": op_id or new_op_id(),
        "version": _call_version(name, version),
    }
    try:
        return _adapter.validate_python(message)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"{name}: {_describe(exc)}") from None


# (owner field, sub field or None, payload field) of the saves `encode_op` builds itself.
_FAST_SHAPES: dict[str, tuple[str, str | None, str]] = {
    "save_state": ("agent_id", "state_id", "state"),
    "save_task": ("agent_id", "task_id", "task_data"),
    "save_conversation": ("conversation_id", None, "message"),
}
_json_str = json.encoder.encode_basestring  # as the json module quotes; keeps non-ASCII


def _op_template(name: str, shape: tuple[str, str | None, str]) -> str:
    """The op's text with `%s` for op id, version, the ids (JSON) and the payload (JSON).
    The op id and the version need no JSON escaping: their rules allow none of `"\\`."""
    owner_field, sub_field, data_field = shape
    ids = f'"{owner_field}":%s' + ("" if sub_field is None else f',"{sub_field}":%s')
    return f'{{"id":"%s","version":"%s","op":"{name}","args":{{{ids},"{data_field}":%s}}}}'


_FAST_TEMPLATES = {name: _op_template(name, shape) for name, shape in _FAST_SHAPES.items()}


def encode_op(
    name: OpName,
    args: dict[str, Any],
    *,
    version: str | int | None = None,
    op_id: str | None = None,
) -> tuple[str, str]:
    """Validate a save as `make_op` does and return `(op id, the op's wire JSON text)`.

    Raises `ValidationError` at the call for anything `make_op` refuses, and also when the
    ids are too long together for a row id (which a store would only refuse at apply).
    States, tasks and messages of the usual shape are checked by the same functions the
    model uses (`check_id`, `encode_payload`, the version and op id rules) without building
    the model, ~4x faster; anything else, and any input those checks refuse, goes through
    `make_op`, so what is accepted and every error message stay exactly the same.
    """
    checked = new_version() if version is None else _call_version(name, version)
    shape = _FAST_SHAPES.get(name)
    if shape is not None and type(args) is dict:
        done = _encode_fast(name, shape, args, checked, op_id)
        if done is not None:
            return done
    op = make_op(name, args, version=checked, op_id=op_id)  # row ids are checked by the model
    return op.id, op.model_dump_json()


def _encode_fast(
    name: str,
    shape: tuple[str, str | None, str],
    args: dict[str, Any],
    version: str,
    op_id: str | None,
) -> tuple[str, str] | None:
    owner_field, sub_field, data_field = shape
    if len(args) != (2 if sub_field is None else 3):
        return None
    owner = args.get(owner_field)
    sub = args.get(sub_field) if sub_field is not None else ""
    data = args.get(data_field)
    if type(owner) is not str or type(sub) is not str or type(data) is not dict:
        return None
    try:
        if not _short_ascii_ids(owner, sub, sub_field is not None):
            check_id(owner_field, owner)
            if sub_field is not None:
                check_id(sub_field, sub)
                row_id((owner_field, owner), (sub_field, sub))
        payload = encode_payload(data_field, data)
        op_id = new_op_id() if op_id is None else _check_op_id(op_id)
    except (ValidationError, ValueError):
        return None  # `make_op` raises the error, worded as always
    template = _FAST_TEMPLATES[name]
    if sub_field is None:
        return op_id, template % (op_id, version, _json_str(owner), payload)
    return op_id, template % (op_id, version, _json_str(owner), _json_str(sub), payload)


# Escaping makes at most 3 characters of one ("/" -> "%2F"), and "|" joins the two ids.
_SHORT_IDS = (MAX_ID_CHARS - 1) // 3


def _short_ascii_ids(owner: str, sub: str, pair: bool) -> bool:
    """Whether the ids surely pass `check_id` and fit a row id however they are escaped:
    non-empty, ASCII, no NUL, short enough together. The usual ids, checked at once."""
    both = owner + sub
    return (
        bool(owner)
        and (bool(sub) or not pair)
        and len(both) <= _SHORT_IDS
        and both.isascii()
        and "\x00" not in both
    )


def op_to_message(op: Op) -> dict[str, Any]:
    return op.model_dump(mode="python")
