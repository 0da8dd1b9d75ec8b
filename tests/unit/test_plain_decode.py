"""A message body `decode_plain` vouches for parses exactly as it would without it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker import wire
from storage import ValidationError
from storage.ops import Op, encode_op, parse_op
from storage.payload import MAX_DEPTH, MAX_PAYLOAD_BYTES, decode_plain
from tests.unit.test_fast_validation import payloads
from worker.bodies import decode_task_body, was_plain

SHAPES = {
    "save_state": ("agent_id", "state_id", "state"),
    "save_task": ("agent_id", "task_id", "task_data"),
    "save_conversation": ("conversation_id", None, "message"),
}


def _parsed(message: object, plain: bool) -> Op | str:
    try:
        return parse_op(message, plain_payload=plain)
    except ValidationError as exc:
        return str(exc)


def _body(op: object) -> list[Any]:
    """A task body carrying `op`, as a message has it."""
    return [[[op]], {}, {"callbacks": None}]


def _message(name: str, payload: object, owner: object = "agent|1", sub: object = "s 1") -> Any:
    owner_field, sub_field, data_field = SHAPES[name]
    args = {owner_field: owner, data_field: payload}
    if sub_field is not None:
        args[sub_field] = sub
    return {"op": name, "id": "op-1", "version": "0001.5", "args": args}


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    payload=payloads | st.sampled_from([[], "text", 3]),
    name=st.sampled_from(sorted(SHAPES)),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
)
def test_a_plain_text_parses_as_the_model_alone_parses_it(
    payload: object, name: str, ascii_only: bool, spaced: bool
) -> None:
    text = json.dumps(
        _body(_message(name, payload)),
        ensure_ascii=ascii_only,
        separators=(", ", ": ") if spaced else (",", ":"),
    )
    try:
        data = text.encode()
    except UnicodeEncodeError:
        assume(False)  # a lone surrogate: no UTF-8 body holds one unescaped
    decoded, plain = decode_plain(data)
    assert json.dumps(decoded) == json.dumps(json.loads(text))
    op = decoded[0][0][0]
    assert _parsed(op, plain) == _parsed(op, False)


@pytest.mark.parametrize(
    "value",
    [
        "1e16",
        "1.5E20",
        "12345678901234567",
        "-12345678901234567",
        "18446744073709551616",
        "-9223372036854775809",
        "12345678901234567.5",
        "-0.0",
        "-0.000",
        "-0e0",
        "-0." + "0" * 400 + "1",
        "1e400",
        "NaN",
        "-Infinity",
        '"\\u0000"',
        '"\\ud800"',
        '"\\uDC00x"',
    ],
)
def test_any_value_the_checks_are_about_makes_a_text_not_plain(value: str) -> None:
    text = f'{{"op":"save_state","args":{{"state":{{"v":[{value}]}}}}}}'
    decoded, plain = decode_plain(text.encode())
    assert not plain
    assert json.dumps(decoded) == json.dumps(json.loads(text))  # read by the json module


@pytest.mark.parametrize(
    "value", ["-0.001", "0.0", "-0", "123456789012345", "1e5", '"8e0c1234"', '"\\u00e9"', "0.1"]
)
def test_usual_values_leave_a_text_plain(value: str) -> None:
    text = f'{{"v":[{value}],"id":"9e9e9e9e9e9e9e9e9e9e"}}'
    assert decode_plain(text.encode())[1] is True


def test_a_large_text_is_not_plain() -> None:
    text = json.dumps({"v": "x" * (MAX_PAYLOAD_BYTES // 3)})
    assert decode_plain(text.encode())[1] is False


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH])
def test_a_body_is_plain_up_to_payloads_of_the_largest_depth_and_refuses_deeper_alike(
    levels: int,
) -> None:
    deep: Any = 1
    for _ in range(levels):
        deep = [deep]
    text = json.dumps(_body(_message("save_state", {"deep": deep})))  # payload depth levels+1
    decoded, plain = decode_plain(text.encode())
    op = decoded[0][0][0]
    assert plain is (levels < MAX_DEPTH)
    parsed = _parsed(op, plain)
    assert parsed == _parsed(op, False)
    if levels < MAX_DEPTH:
        assert not isinstance(parsed, str)
    else:
        assert isinstance(parsed, str) and "nested more than 64 levels" in parsed


def test_the_workers_read_our_producers_messages_as_plain() -> None:
    saves = [
        encode_op("save_state", {"agent_id": "a", "state_id": f"s{i}", "state": {"x": i / 7}})
        for i in range(20)
    ]
    message = wire.build_messages([i for i, _ in saves], [t for _, t in saves])[0][1]
    parsed = wire.parse_message(message)
    assert parsed.plain
    assert [parse_op(op, plain_payload=True) for op in parsed.ops] == [
        parse_op(op) for op in parsed.ops
    ]


def test_an_envelope_orjson_refuses_is_read_as_the_json_module_reads_it() -> None:
    # Another publisher's message with NaN in a header we never use: orjson refuses the
    # envelope, the json module reads it; the ops are the same either way.
    op_id, text = encode_op("save_state", {"agent_id": "a", "state_id": "s", "state": {"x": 1}})
    message = wire.build_message(op_id, [text])
    odd = message.replace(b'"priority":0', b'"priority":NaN')
    assert odd != message

    assert wire.parse_message(odd) == wire.parse_message(message)
    with pytest.raises(wire.MalformedMessage, match="message is not JSON"):
        wire.parse_message(odd.replace(b"NaN", b"NaN,"))


def test_a_task_body_decoded_plain_marks_its_op_list_once() -> None:
    ops = [{"op": "save_state", "id": "o", "version": "1", "args": {"state": {"x": 0.5}}}]
    body = json.dumps([[ops], {}, {}]).encode()
    decoded = decode_task_body(body)
    assert decoded == json.loads(body)
    assert not was_plain(list(decoded[0][0]))  # an equal list is not the one decoded
    decoded = decode_task_body(body)
    assert was_plain(decoded[0][0])
    assert not was_plain(decoded[0][0])  # the mark is taken once


@pytest.mark.parametrize(
    "body",
    [
        b'[[[{"x": "\\u0000"}]], {}, {}]',
        b'[[[{"x": NaN}]], {}, {}]',
        b'[[[{"x": -0.0}]], {}, {}]',
        b"[1, 2]",
        b'{"a": 1}',
    ],
)
def test_a_task_body_with_a_suspect_text_or_another_shape_is_not_marked(body: bytes) -> None:
    decoded = decode_task_body(body)
    ops = decoded[0][0] if isinstance(decoded, list) and isinstance(decoded[0], list) else decoded
    assert not was_plain(ops)
