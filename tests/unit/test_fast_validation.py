"""The fast validation paths accept nothing the exact ones refuse, and write the same text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import ValidationError
from storage.ids import check_id, row_id
from storage.ops import _short_ascii_ids, encode_op, make_op, parse_op
from storage.payload import MAX_PAYLOAD_BYTES, _encode_exact, _fast_encode, encode_payload

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-4, 9.99e-5, 1e16, 9999999999999998.0, 2.0**53 + 0.5, 0.1, -0.5])
    | st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53)])
    | st.text(max_size=20)
    | st.sampled_from(["a\x00b", "\udc00", "v1.0", "3e-5", "1234567890123456", "é€😀"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.tuples(inner)
    ),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(max_size=8), values, max_size=6)


def _exact(value: object) -> str | ValidationError:
    try:
        return _encode_exact("state", value)
    except ValidationError as exc:
        return exc


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(payloads)
def test_fast_payload_path_agrees_with_the_exact_one(value: dict[str, Any]) -> None:
    fast = _fast_encode(value)
    if fast is not None:
        assert fast == _exact(value), "the fast path took a payload the exact path refuses"


@pytest.mark.parametrize(
    "value",
    [
        {"step": 12, "status": "thinking", "scores": [0.1, 0.25, -3.5], "ok": True, "n": None},
        {"unicode": "你好 🌍 שלום", "escapes": '"\\\n\t\b\f\x01\x1f\x7f/\u2028'},
        {"nested": {"a": [{"b": [1, 2, {"c": "d"}]}]}, "empty": {}, "list": []},
        {"int": 10**15 - 1, "small float": 0.0001, "float": 123456789.125},
    ],
)
def test_usual_payloads_take_the_fast_path(value: dict[str, Any]) -> None:
    assert _fast_encode(value) == _exact(value) == encode_payload("state", value)


@pytest.mark.parametrize(
    "value",
    [
        {"integral float": 1.0},
        {"huge": 2**53},
        {"tiny": 1.25e-05},
        {"nul": "a\x00"},
        {"tuple": (1, 2)},
        {1: "int key"},
        {"inf": float("inf")},
        {"nan": float("nan")},
        {"set": {1}},
        {"near the limit": "x" * (MAX_PAYLOAD_BYTES // 2)},
        {"nul key \x00": 1},
        {"dict subclass": type("D", (dict,), {})()},
        {"bool subclass key": {True: 1}},
    ],
    ids=repr,
)
def test_anything_doubtful_takes_the_exact_path(value: dict[str, Any]) -> None:
    assert _fast_encode(value) is None


STATE = {"step": 12, "notes": "x" * 50, "scores": [0.5, 0.25]}


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("save_state", {"agent_id": "a", "state_id": "s/1|%", "state": STATE}),
        ("save_task", {"agent_id": 'q"uote', "task_id": "t\n", "task_data": STATE}),
        ("save_conversation", {"conversation_id": "ü", "message": STATE}),
        ("save_transactions", {"case_id": "c", "transactions": [STATE, {"id": "x", **STATE}]}),
    ],
)
def test_encode_op_writes_the_op_make_op_builds(name: Any, args: dict[str, Any]) -> None:
    op_id, text = encode_op(name, args, version="000000000000001.000000.abcdef01")
    expected = make_op(name, args, version="000000000000001.000000.abcdef01", op_id=op_id)
    assert parse_op(json.loads(text)) == expected


BAD: list[tuple[str, dict[str, Any]]] = [
    ("save_state", {"agent_id": "", "state_id": "s", "state": {}}),
    ("save_state", {"agent_id": "a", "state_id": "s" * 256, "state": {}}),
    ("save_state", {"agent_id": "a", "state_id": "s", "state": {"x": -0.0}}),
    ("save_state", {"agent_id": "a", "state_id": "s", "state": []}),
    ("save_state", {"agent_id": "a", "state_id": "s", "state": {}, "extra": 1}),
    ("save_state", {"agent_id": "a", "state": {}}),
    ("save_task", {"agent_id": 1, "task_id": "t", "task_data": {}}),
    ("save_conversation", {"conversation_id": "c", "message": {"n": "\x00"}}),
]


@pytest.mark.parametrize(("name", "args"), BAD, ids=repr)
def test_encode_op_refuses_with_make_ops_message(name: Any, args: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as expected:
        make_op(name, args)
    with pytest.raises(ValidationError) as got:
        encode_op(name, args)
    assert str(got.value) == str(expected.value)


def test_encode_op_refuses_ids_too_long_together_at_the_call() -> None:
    with pytest.raises(ValidationError, match="too long together"):
        encode_op("save_state", {"agent_id": "/" * 200, "state_id": "s" * 200, "state": {}})
    with pytest.raises(ValidationError, match="too long together"):
        encode_op("save_transactions", {"case_id": "c" * 200, "transactions": [{"id": "i" * 60}]})


def test_bad_version_or_op_id_is_refused() -> None:
    args = {"agent_id": "a", "state_id": "s", "state": {}}
    with pytest.raises(ValidationError, match="version"):
        encode_op("save_state", args, version="bad version!")
    with pytest.raises(ValidationError, match="op id"):
        encode_op("save_state", args, op_id="bad id!")


ids = st.text(max_size=90) | st.sampled_from(["", "a\x00", "\udc00", "/" * 84, "%|#?\\ \t"])


@settings(max_examples=2000, deadline=None)
@given(ids, ids)
def test_ids_taken_at_once_pass_every_id_check(owner: str, sub: str) -> None:
    if _short_ascii_ids(owner, sub, pair=True):
        check_id("agent_id", owner)
        check_id("state_id", sub)
        row_id(("agent_id", owner), ("state_id", sub))
    if _short_ascii_ids(owner, "", pair=False):
        check_id("conversation_id", owner)


def test_the_longest_ids_taken_at_once_fit_a_row_id_escaped() -> None:
    owner, sub = "/" * 42, "|" * 42
    assert _short_ascii_ids(owner, sub, pair=True)
    assert len(row_id(("agent_id", owner), ("state_id", sub))) <= 255
    assert not _short_ascii_ids(owner + "/", sub, pair=True)


@settings(max_examples=5000, deadline=None)
@given(
    st.floats(min_value=1e-4, max_value=1e16, exclude_max=True)
    | st.floats(min_value=-1e16, max_value=-1e-4, exclude_min=True)
)
def test_floats_the_fast_path_takes_have_the_json_modules_digits(value: float) -> None:
    fast = _fast_encode({"x": value, "in": [value]})
    assert fast is None or fast == _exact({"x": value, "in": [value]})
    assert (fast is None) == value.is_integer()
