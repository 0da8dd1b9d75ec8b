"""Checkpoint ops encoded without their models: the same op as `make_op` makes, the same
errors for anything it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storage.checkpoint_encode import encode_checkpoint_op
from storage.checkpoint_ops import MAX_CHECKPOINT_B64, MAX_HEAD_B64
from storage.errors import ValidationError
from storage.ops import make_op, parse_op


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


@pytest.mark.parametrize(
    ("name", "args"),
    [
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
                blobs=[
                    {"type": "t", "data": "A" * MAX_CHECKPOINT_B64, "channel": "a", "version": "1"}
                ]
            ),
        ),
        ("put_checkpoint", {**_put(), "extra": 1}),
        ("put_writes", _writes(task_id="t\x00")),
        (
            "put_writes",
            _writes(
                writes=[
                    {"type": "t", "data": "A" * (MAX_CHECKPOINT_B64 + 4), "idx": 0, "channel": "a"}
                ]
            ),
        ),
    ],
)
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
