"""The worker's op check accepts exactly what the op models accept, with their errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import ValidationError
from storage.op_check import check_op
from storage.ops import parse_op
from storage.records import CheckedSave, plan, plan_with_keys
from tests.unit.test_fast_validation import payloads

SHAPES = {
    "save_state": ("agent_id", "state_id", "state"),
    "save_task": ("agent_id", "task_id", "task_data"),
    "save_conversation": ("conversation_id", None, "message"),
}
USUAL = {"step": 3, "status": "thinking", "scores": [0.1, 0.25]}


def _message(name: str, payload: object = USUAL, owner: object = "a", sub: object = "s") -> Any:
    owner_field, sub_field, data_field = SHAPES[name]
    args = {owner_field: owner, data_field: payload}
    if sub_field is not None:
        args[sub_field] = sub
    return {"op": name, "id": "op-1", "version": "000000000000001.000000.n", "args": args}


def _outcome(check: Any, message: object, plain: bool) -> tuple[str, Any]:
    """What `check` makes of `message`: its error text, or the op's dump and records."""
    try:
        op = check(message, plain_payload=plain)
    except ValidationError as exc:
        return "refused", str(exc)
    return "accepted", (op.model_dump(mode="json"), plan([op]))


GOOD_IDS = ["a", "agent|1", "s 1%", "é€😀", "x" * 255]
# Per field of a message: values it may take, valid ones first, then one of each fault.
FAULTS: dict[str, list[Any]] = {
    "owner": ["", "a\x00", "\udc00", "x" * 256, 7, None],
    "sub": ["", "a\x00", "\udc00", "/" * 200, 7, None],
    "payload": [[], "text", 3, None, {"x": -0.0}, {"n": 2**60}, {1: "int key"}],
    "version": ["", "bad version!", "9" * 65, 42, None],
    "id": ["", "bad id!", "x" * 65, 1, None],
    "op": ["delete_state", "save_transactions", "nope", 3],
    "extra": [{"extra": 1}],
    "args_extra": [{"extra": 1}],
    "drop": ["id", "version", "args", "op"],
}


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    name=st.sampled_from(sorted(SHAPES)),
    owner=st.sampled_from(GOOD_IDS),
    sub=st.sampled_from(GOOD_IDS),
    payload=st.sampled_from([USUAL, {}, {"n": {"l": [1, "é", None, True]}}]) | payloads,
    version=st.sampled_from(["000000000000001.000000.n", "42", "v1.0:b-c_d"]),
    fault=st.sampled_from([None, None, None, *FAULTS]),
    which=st.integers(min_value=0, max_value=6),
    plain=st.booleans(),
)
def test_check_op_agrees_with_the_models(
    name: str,
    owner: str,
    sub: str,
    payload: dict[str, Any],
    version: str,
    fault: str | None,
    which: int,
    plain: bool,
) -> None:
    message = _message(name, payload, owner, sub)
    message["version"] = version
    if fault is not None:  # one field made invalid, in one of its ways
        bad = FAULTS[fault][which % len(FAULTS[fault])]
        if fault in ("owner", "sub", "payload"):
            field = dict(zip(("owner", "sub", "payload"), SHAPES[name], strict=True))[fault]
            if field is not None:
                message["args"][field] = bad
        elif fault == "extra":
            message.update(bad)
        elif fault == "args_extra":
            message["args"].update(bad)
        elif fault == "drop":
            del message[bad]
        else:
            message[fault] = bad
    # `plain` vouches for the payload only where `decode_plain` would have: plain JSON.
    vouched = plain and _outcome(parse_op, message, False)[0] == "accepted"
    assert _outcome(check_op, message, vouched) == _outcome(parse_op, message, vouched)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("plain", [True, False])
def test_usual_saves_are_checked_without_their_model(name: str, plain: bool) -> None:
    message = _message(name, owner="agent|1 %", sub="s/1\t")
    checked = check_op(message, plain_payload=plain)
    model = parse_op(message)
    assert isinstance(checked, CheckedSave)
    assert (checked.op, checked.id, checked.version) == (model.op, model.id, model.version)
    assert checked.model_dump(mode="json") == model.model_dump(mode="json")
    assert plan_with_keys([checked]) == plan_with_keys([model])


@pytest.mark.parametrize(
    "message",
    [
        _message("save_state", owner="/" * 200, sub="s" * 200),  # row id too long
        _message("save_task", payload={"x": float("nan")}),
        _message("save_conversation", owner=""),
        {**_message("save_state"), "version": "v 1"},
        {**_message("save_state"), "id": "op/1"},
    ],
    ids=repr,
)
def test_a_refused_save_gets_the_models_error(message: Any) -> None:
    with pytest.raises(ValidationError) as expected:
        parse_op(message)
    with pytest.raises(ValidationError) as got:
        check_op(message)
    assert str(got.value) == str(expected.value)
