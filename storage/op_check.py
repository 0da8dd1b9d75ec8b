"""The worker's op check: the usual saves and checkpoint ops checked without their models.

`parse_op` validates a message with its pydantic model, several microseconds an op. A save
of a state, task or message of the usual shape is checked here by the rules its model applies
(the op id and version patterns, `check_id`, the row id rules, `encode_payload`) and becomes a
`CheckedSave` holding the record it writes; a checkpoint put or pending writes of the shape
the saver publishes, by the test its encoder makes (`storage.checkpoint_encode`), becomes a
`CheckedCheckpoint` holding its rows. Anything else, and anything one of those checks
refuses, goes through `parse_op`: what is accepted, and every error message, stay exactly the
model's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, cast

from .checkpoint_encode import put_fits, writes_fit
from .checkpoints import put_rows, write_rows
from .errors import ValidationError
from .ids import check_id, state_row_id, task_row_id
from .op_base import OP_ID_RE
from .ops import OpName, parse_op
from .payload import encode_payload
from .records import AnyOp, CheckedCheckpoint, CheckedSave, Record, save_record
from .versions import VERSION_RE

_SaveKind = Literal["state", "task", "conversation"]
# Per save: (record kind, owner field, sub id field or None, payload field, row id of
# (owner, sub id); a message's row id is its op id).
_SHAPES: dict[str, tuple[_SaveKind, str, str | None, str, Callable[[str, str], str] | None]] = {
    "save_state": ("state", "agent_id", "state_id", "state", state_row_id),
    "save_task": ("task", "agent_id", "task_id", "task_data", task_row_id),
    "save_conversation": ("conversation", "conversation_id", None, "message", None),
}

# Per checkpoint op: whether its args are of the usual shape the model takes as they are (the
# same test the saver's encoder makes), and the rows they write.
_CHECKPOINT_SHAPES: dict[
    str, tuple[Callable[[dict[str, Any]], bool], Callable[[str, dict[str, Any]], Iterable[Record]]]
] = {
    "put_checkpoint": (put_fits, put_rows),
    "put_writes": (writes_fit, write_rows),
}

# An op id and a version, one space apart: both pass `check_op_id` and `check_version` if
# this matches (their patterns, without anchors); anything it misses goes to the model.
_ID_AND_VERSION = re.compile(f"{OP_ID_RE.pattern[1:-1]} {VERSION_RE.pattern[1:-1]}")


def check_op(message: object, *, plain_payload: bool = False) -> AnyOp:
    """`parse_op(message, plain_payload=...)`, but a usual save is checked without its model
    (`CheckedSave`). Raises `ValidationError` as `parse_op` does."""
    if type(message) is dict and len(message) == 4:
        name = message.get("op")
        checked: AnyOp | None = None
        if type(name) is str and name in _SHAPES:
            checked = _check_save(cast(OpName, name), message, plain_payload)
        elif type(name) is str and name in _CHECKPOINT_SHAPES:
            checked = _check_checkpoint(cast(OpName, name), message)
        if checked is not None:
            return checked
    return parse_op(message, plain_payload=plain_payload)


def _check_save(name: OpName, message: dict[str, Any], plain: bool) -> CheckedSave | None:
    kind, owner_field, sub_field, data_field, row_of = _SHAPES[name]
    args, op_id, version = message.get("args"), message.get("id"), message.get("version")
    # The model's fields exactly: four in the message (the op name is one), two or three in
    # its arguments; strings and a dict of exactly those types, as the model takes them.
    if type(args) is not dict or len(args) != (2 if sub_field is None else 3):
        return None
    owner, data = args.get(owner_field), args.get(data_field)
    sub = op_id if sub_field is None else args.get(sub_field)
    if type(owner) is not str or type(sub) is not str or type(data) is not dict:
        return None
    if type(op_id) is not str or type(version) is not str:
        return None
    if not _ID_AND_VERSION.fullmatch(f"{op_id} {version}"):
        return None
    try:
        check_id(owner_field, owner)
        if sub_field is not None:
            check_id(sub_field, sub)
        rid = sub if row_of is None else row_of(owner, sub)
        if not plain:  # `storage.payload.decode_plain` vouched for every payload of a plain body
            encode_payload(data_field, data)
    except ValidationError:
        return None  # `parse_op` raises the error, worded as always
    record = save_record(kind, rid, owner, sub, data, version)
    return CheckedSave(name, op_id, version, args, record)


def _check_checkpoint(name: OpName, message: dict[str, Any]) -> CheckedCheckpoint | None:
    fits, rows = _CHECKPOINT_SHAPES[name]
    args, op_id, version = message.get("args"), message.get("id"), message.get("version")
    if type(op_id) is not str or type(version) is not str or type(args) is not dict:
        return None
    if not _ID_AND_VERSION.fullmatch(f"{op_id} {version}") or not fits(args):
        return None
    try:
        records = list(rows(version, args))
    except ValidationError:
        return None  # a row id too long: the model's way raises it, worded as always
    return CheckedCheckpoint(name, op_id, version, args, records)
