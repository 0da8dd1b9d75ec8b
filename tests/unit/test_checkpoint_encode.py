"""Checkpoint ops encoded (by the saver) and checked (by the worker) without their models:
the same op and rows as the model's, the same errors for anything they refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storage.checkpoint_encode import encode_checkpoint_op
from storage.checkpoint_ops import MAX_CHECKPOINT_B64, MAX_HEAD_B64, PutCheckpoint
from storage.checkpoints import PART_CHARS, checkpoint_records
from storage.errors import ValidationError
from storage.op_check import check_op
from storage.ops import make_op, new_op_id, parse_op
from storage.records import CheckedCheckpoint
from storage.versions import new_version


def _put(**changes: Any) -> dict[str, Any]:
    args = {
        "thread_id": "t-1",
        "checkpoint_ns": "",
        "checkpoint_id": "1ef-01",
        "parent_checkpoint_id": None,
        "checkpoint": {"type": "msgpack", "data": "AAE="},
        "metadata": {"type": "msgpack", "data": "gA=="},
        "channel_versions": {"a": "0001.5", "__start__": "0002.1"},
        "delta_channels": ["notes"],
        "run_id": "run-1",
        "blobs": [{"type": "msgpack", "data": "AQ==", "channel": "a", "version": "0001.5"}],
    }
    return {**args, **changes}


def _writes(**changes: Any) -> dict[str, Any]:
    args = {
        "thread_id": "t-1",
        "checkpoint_ns": "inner:ns é",
        "checkpoint_id": "1ef-01",
        "task_id": "task-9",
        "task_path": "~__pregel_pull, a",
        "writes": [
            {"type": "msgpack", "data": "AQ==", "idx": 0, "channel": "a"},
            {"type": "empty", "data": "", "idx": -1, "channel": "__error__"},
        ],
    }
    return {**args, **changes}


@pytest.mark.parametrize(("name", "args"), [("put_checkpoint", _put()), ("put_writes", _writes())])
def test_the_usual_ops_are_what_the_model_makes(name: Any, args: dict[str, Any]) -> None:
    op_id, text = encode_checkpoint_op(name, args)
    message = json.loads(text)
    op = parse_op(message)  # what the worker does with it
    assert op.id == op_id and op.op == name
    made = make_op(name, args, version=message["version"], op_id=op_id)
    assert op == made
    assert message == json.loads(made.model_dump_json())


def _error(name: Any, args: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        make_op(name, args)
    return str(exc.value)


_REFUSED: list[tuple[Any, dict[str, Any]]] = [
    ("put_checkpoint", _put(thread_id="")),
    ("put_checkpoint", _put(checkpoint_id=7)),
    ("put_checkpoint", _put(checkpoint_ns="x" * 256)),
    ("put_checkpoint", _put(channel_versions={"a": 1})),
    ("put_checkpoint", _put(blobs=[{"type": "msgpack", "data": "AQ==", "channel": "a"}])),
    (
        "put_checkpoint",
        _put(checkpoint={"type": "msgpack", "data": "A" * (MAX_HEAD_B64 + 4)}),
    ),
    (
        "put_checkpoint",
        _put(
            blobs=[{"type": "t", "data": "A" * MAX_CHECKPOINT_B64, "channel": "a", "version": "1"}]
        ),
    ),
    ("put_checkpoint", {**_put(), "extra": 1}),
    ("put_writes", _writes(task_id="t\x00")),
    (
        "put_writes",
        _writes(
            writes=[{"type": "t", "data": "A" * (MAX_CHECKPOINT_B64 + 4), "idx": 0, "channel": "a"}]
        ),
    ),
]


@pytest.mark.parametrize(("name", "args"), _REFUSED)
def test_anything_the_model_refuses_is_refused_with_its_error(
    name: Any, args: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as exc:
        encode_checkpoint_op(name, args)
    assert str(exc.value) == _error(name, args)


def test_other_shapes_and_ops_go_through_the_model() -> None:
    # Fields in another order, a default left out, an idx the model converts: its op.
    reordered = dict(reversed(list(_put().items())))
    del reordered["run_id"]
    for name, args in [
        ("put_checkpoint", reordered),
        ("put_writes", _writes(writes=[{"type": "t", "data": "", "idx": "0", "channel": "a"}])),
        ("delete_thread", {"thread_id": "t-1"}),
    ]:
        op_id, text = encode_checkpoint_op(name, args)  # type: ignore[arg-type]
        assert parse_op(json.loads(text)).id == op_id


def _message(name: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": new_op_id(), "version": new_version(), "op": name, "args": args}


_SPLIT = "A" * (2 * PART_CHARS + 8)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("put_checkpoint", _put()),
        ("put_writes", _writes()),
        # Ids every escape applies to, a namespace beyond ASCII, a value split in three.
        ("put_checkpoint", _put(thread_id="t|1 /x%", checkpoint_ns="ns: é|#")),
        (
            "put_checkpoint",
            _put(blobs=[{"type": "bytes", "data": _SPLIT, "channel": "c|1", "version": "2"}]),
        ),
        ("put_writes", _writes(writes=[{"type": "t", "data": _SPLIT, "idx": -3, "channel": "x"}])),
        ("put_checkpoint", _put(parent_checkpoint_id="1ef-00", run_id=None, blobs=[])),
    ],
)
def test_the_worker_checks_the_usual_ops_without_the_model(name: Any, args: dict[str, Any]) -> None:
    message = json.loads(encode_checkpoint_op(name, args)[1])
    checked = check_op(message)
    model = parse_op(message)
    assert type(checked) is CheckedCheckpoint
    assert checked.records == list(checkpoint_records(model))  # type: ignore[arg-type]
    assert checked.model_dump(mode="json") == model.model_dump(mode="json")
    assert (checked.id, checked.version, checked.op) == (model.id, model.version, model.op)


@pytest.mark.parametrize(("name", "args"), _REFUSED)
def test_the_worker_refuses_what_the_model_refuses_with_its_error(
    name: Any, args: dict[str, Any]
) -> None:
    message = _message(name, args)
    with pytest.raises(ValidationError) as exc:
        check_op(message)
    with pytest.raises(ValidationError) as model:
        parse_op(message)
    assert str(exc.value) == str(model.value)


def test_the_worker_leaves_other_shapes_and_row_ids_too_long_to_the_model() -> None:
    reordered = dict(reversed(list(_put().items())))
    del reordered["run_id"]
    too_long = _put(thread_id="t" * 200, checkpoint_ns="n" * 60)
    for name, args in [
        ("put_checkpoint", reordered),
        ("put_writes", _writes(writes=[{"type": "t", "data": "", "idx": "0", "channel": "a"}])),
        ("put_checkpoint", too_long),
    ]:
        message = _message(name, args)
        assert check_op(message) == parse_op(message)
    # The model takes that one; its row id is refused where it always was, at the write.
    with pytest.raises(ValidationError, match="too long"):
        list(checkpoint_records(PutCheckpoint.model_validate(_message("put_checkpoint", too_long))))
