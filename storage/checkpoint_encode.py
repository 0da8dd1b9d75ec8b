"""Checkpoint puts and pending writes encoded for the wire without building their models.

A superstep of a LangGraph graph publishes a `put_checkpoint` and a `put_writes`; building
and dumping their pydantic models took ~6 % of a superstep's client CPU. The saver's ops
have one shape, so the model's checks reduce to a few type tests and two sums: an op of
that shape that passes them is encoded straight away (orjson), the same JSON the model
dumps. Anything else goes through `make_op`, so what is accepted and every error message
stay exactly the same.
"""

from __future__ import annotations

from typing import Any

import orjson

from .checkpoint_ops import MAX_CHECKPOINT_B64, MAX_HEAD_B64, MAX_NS_CHARS
from .ids import MAX_ID_CHARS
from .ops import OpName, make_op, new_op_id
from .versions import new_version

# Every field of the args, in the models' order (a missing default, or an extra, goes the
# model's way).
_PUT_FIELDS = (
    "thread_id",
    "checkpoint_ns",
    "checkpoint_id",
    "parent_checkpoint_id",
    "checkpoint",
    "metadata",
    "channel_versions",
    "delta_channels",
    "run_id",
    "blobs",
)
_WRITES_FIELDS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "task_path", "writes")
_BLOB = ("type", "data")
_CHANNEL_BLOB = ("type", "data", "channel", "version")
_WRITE_BLOB = ("type", "data", "idx", "channel")


def encode_checkpoint_op(name: OpName, args: dict[str, Any]) -> tuple[str, str]:
    """`(op id, the op's wire JSON text)` of a new op, as `make_op(name, args)` would make
    and dump it (raising its `ValidationError` for a bad call); puts and pending writes of
    the usual shape without the model."""
    if name == "put_checkpoint":
        fits = put_fits(args)
    elif name == "put_writes":
        fits = writes_fit(args)
    else:
        fits = False
    if fits:
        op_id = new_op_id()
        message = {"id": op_id, "version": new_version(), "op": name, "args": args}
        try:
            return op_id, orjson.dumps(message).decode()
        except TypeError:
            pass  # a lone surrogate, say: the model says what it makes of it
    op = make_op(name, args)
    return op.id, op.model_dump_json()


def put_fits(args: dict[str, Any]) -> bool:
    """Whether `args` are a put's of the usual shape that its model accepts as they are."""
    if not (type(args) is dict and tuple(args) == _PUT_FIELDS and _keys_fit(args)):
        return False
    parent, run_id = args["parent_checkpoint_id"], args["run_id"]
    versions, deltas = args["channel_versions"], args["delta_channels"]
    head = args["checkpoint"], args["metadata"]
    blobs = args["blobs"]
    if not (
        (parent is None or type(parent) is str)
        and (run_id is None or type(run_id) is str)
        and type(versions) is dict
        and all(type(k) is str and type(v) is str for k, v in versions.items())
        and type(deltas) is list
        and all(type(d) is str for d in deltas)
        and all(_blob_fits(b, _BLOB) for b in head)
        and type(blobs) is list
        and all(_blob_fits(b, _CHANNEL_BLOB) and type(b["version"]) is str for b in blobs)
    ):
        return False
    head_size = len(head[0]["data"]) + len(head[1]["data"])
    size = head_size + sum(len(b["data"]) for b in blobs)
    return head_size <= MAX_HEAD_B64 and size <= MAX_CHECKPOINT_B64


def writes_fit(args: dict[str, Any]) -> bool:
    """`put_fits` for pending writes."""
    if not (type(args) is dict and tuple(args) == _WRITES_FIELDS and _keys_fit(args)):
        return False
    writes = args["writes"]
    return (
        _id_fits(args["task_id"])
        and type(args["task_path"]) is str
        and type(writes) is list
        and all(_blob_fits(w, _WRITE_BLOB) and type(w["idx"]) is int for w in writes)
        and sum(len(w["data"]) for w in writes) <= MAX_CHECKPOINT_B64
    )


def _keys_fit(args: dict[str, Any]) -> bool:
    ns = args["checkpoint_ns"]
    return (
        _id_fits(args["thread_id"])
        and _id_fits(args["checkpoint_id"])
        and type(ns) is str
        and len(ns) <= MAX_NS_CHARS
        and "\x00" not in ns
    )


def _id_fits(value: object) -> bool:
    # `check_id`'s usual id, which it passes at once.
    return (
        type(value) is str
        and 0 < len(value) <= MAX_ID_CHARS
        and value.isascii()
        and "\x00" not in value
    )


def _blob_fits(blob: object, fields: tuple[str, ...]) -> bool:
    # Every field a string but the `idx` the caller checks.
    return (
        type(blob) is dict
        and tuple(blob) == fields
        and type(blob["type"]) is str
        and type(blob["data"]) is str
        and (len(fields) == 2 or type(blob["channel"]) is str)
    )
