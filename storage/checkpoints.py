"""LangGraph checkpoints as records: their row ids, what their ops write, values split in parts.

Every row of a thread is partitioned by its thread id and its row id starts with it, so one
thread's checkpoints (or blobs, or writes) of one namespace are a row id prefix:

- checkpoint: `thread|ns|checkpoint id`
- channel blob: `thread|ns|channel|version`
- pending write: `thread|ns|checkpoint id|task id|idx`

A serialised value larger than `PART_CHARS` base64 characters is split: the row holds the
first part and `parts`, the rows `<row id>|%+<n>` hold the others (`%` is always escaped in
ids, so no other row id looks like that). Cosmos DB's items stay below its 2 MB limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .checkpoint_ops import MAX_HEAD_B64, DeleteCheckpointRows, PutCheckpoint, PutWrites
from .ids import row_id
from .records import Record

PART_CHARS = MAX_HEAD_B64
PART_MARK = "|%+"
# Row ids stay this far below the 255-character limit, room for a part's suffix.
_PART_ROOM = 8


def _rid(*parts: str) -> str:
    rid = row_id(*(("checkpoint key", p) for p in parts))
    if len(rid) > 255 - _PART_ROOM:
        row_id(*(("checkpoint key", p) for p in parts), ("part", "x" * 255))  # raises
    return rid


def thread_prefix(thread_id: str, *parts: str) -> str:
    """The row id prefix of `thread_id`'s rows under `parts` (e.g. a namespace)."""
    return _rid(thread_id, *parts) + "|"


def checkpoint_rid(thread_id: str, ns: str, checkpoint_id: str) -> str:
    return _rid(thread_id, ns, checkpoint_id)


def blob_rid(thread_id: str, ns: str, channel: str, version: str) -> str:
    return _rid(thread_id, ns, channel, version)


def write_rid(thread_id: str, ns: str, checkpoint_id: str, task_id: str, idx: int) -> str:
    return _rid(thread_id, ns, checkpoint_id, task_id, str(idx))


def is_part(rec: Record) -> bool:
    """Whether `rec` holds a later part of a split value, not a row of its own."""
    return PART_MARK in rec.row_id


def part_rids(rid: str, parts: int) -> list[str]:
    return [f"{rid}{PART_MARK}{n}" for n in range(1, parts)]


def keeps_first(kind: str, stored_deleted: bool, incoming_deleted: bool, data: Any) -> bool:
    """LangGraph's rule for pending writes: a regular write (idx >= 0) stays as first written;
    the special channels (ERROR, INTERRUPT, ...: idx < 0) are overwritten by newer versions.

    `data` is the incoming row's payload, or a callable returning it (decoded only if needed).
    """
    if kind != "checkpoint_write" or stored_deleted or incoming_deleted:
        return False
    payload = data() if callable(data) else data
    return int(payload.get("idx", 0)) >= 0


def _split(
    kind: Any, rid: str, thread: str, data: dict[str, Any], version: str, keep: dict[str, Any]
) -> Iterable[Record]:
    text: str = data["data"]
    pieces = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)] or [""]
    first = {**data, "data": pieces[0], "parts": len(pieces)}
    yield Record(kind, rid, thread, first, version, version, _sub(rid))
    for n, piece in enumerate(pieces[1:], start=1):
        prid = f"{rid}{PART_MARK}{n}"
        yield Record(kind, prid, thread, {**keep, "data": piece}, version, version, _sub(prid))


def _sub(rid: str) -> str:
    # The row id after the (escaped, so "|"-free) thread id: the id within the partition.
    return rid.partition("|")[2]


def _gone(kind: Any, rid: str, thread: str, version: str, parts: int) -> Iterable[Record]:
    for one in (rid, *part_rids(rid, parts)):
        yield Record(kind, one, thread, {}, version, version, _sub(one), deleted=True)


def checkpoint_records(
    op: PutCheckpoint | PutWrites | DeleteCheckpointRows,
) -> Iterable[Record]:
    """The rows a checkpoint op writes (deletes of a whole thread are tombstones instead)."""
    v, a = op.version, op.args
    if isinstance(op, PutCheckpoint):
        yield from put_rows(v, op.args.model_dump())
    elif isinstance(op, PutWrites):
        yield from write_rows(v, op.args.model_dump())
    else:
        t = a.thread_id
        for ns, cid in op.args.checkpoints:
            yield from _gone("checkpoint", checkpoint_rid(t, ns, cid), t, v, 1)
        for ns, channel, version, parts in op.args.blobs:
            yield from _gone("checkpoint_blob", blob_rid(t, ns, channel, version), t, v, parts)
        for ns, cid, task, idx, parts in op.args.writes:
            yield from _gone("checkpoint_write", write_rid(t, ns, cid, task, idx), t, v, parts)


def put_rows(version: str, args: dict[str, Any]) -> Iterable[Record]:
    """The rows of a put at `version`, from its args as its model dumps them."""
    thread, ns, cid = args["thread_id"], args["checkpoint_ns"], args["checkpoint_id"]
    data = {
        "checkpoint_ns": ns,
        "checkpoint_id": cid,
        "parent_checkpoint_id": args["parent_checkpoint_id"],
        "metadata": args["metadata"],
        "channel_versions": args["channel_versions"],
        "delta_channels": args["delta_channels"],
        "run_id": args["run_id"],
        **args["checkpoint"],
    }
    rid = checkpoint_rid(thread, ns, cid)
    yield Record("checkpoint", rid, thread, data, version, version, _sub(rid))
    for blob in args["blobs"]:
        rid = blob_rid(thread, ns, blob["channel"], blob["version"])
        yield from _split("checkpoint_blob", rid, thread, blob, version, {})


def write_rows(version: str, args: dict[str, Any]) -> Iterable[Record]:
    """The rows of pending writes at `version`, from their args as their model dumps them."""
    thread, ns, cid, task = (
        args["thread_id"],
        args["checkpoint_ns"],
        args["checkpoint_id"],
        args["task_id"],
    )
    for item in args["writes"]:
        idx = item["idx"]
        rid = write_rid(thread, ns, cid, task, idx)
        data = {
            "checkpoint_ns": ns,
            "checkpoint_id": cid,
            "task_id": task,
            "task_path": args["task_path"],
            **item,
        }
        yield from _split("checkpoint_write", rid, thread, data, version, {"idx": idx})
