"""Numbers the stores cannot return unchanged are refused at the call, saying what to do."""

from __future__ import annotations

import pytest

from storage import ValidationError
from storage.ops import make_op
from storage.payload import encode_payload


@pytest.mark.parametrize("value", [-0.0, 1e16, -1e16, 1.5e17, 1e300, -1.7976931348623157e308])
def test_floats_jsonb_would_change_are_refused(value: float) -> None:
    with pytest.raises(ValidationError, match=r"^state has the float .* save it as a string"):
        encode_payload("state", {"deep": [{"x": value}]})


@pytest.mark.parametrize(
    "value",
    [1.0, 0.0, -2.0, 2.0**53 - 1, 9999999999999998.0, 0.5, -2.5, 1e-7, 5e-324, -5e-324, 123456.789],
)
def test_floats_are_kept_as_written(value: float) -> None:
    assert encode_payload("state", {"x": value}) == f'{{"x":{value!r}}}'


def test_the_field_is_named_for_every_number_rule() -> None:
    with pytest.raises(ValidationError, match=r"transactions\[1\] has the float 1e\+16,"):
        make_op("save_transactions", {"case_id": "c", "transactions": [{"a": 1}, {"a": 1e16}]})
    with pytest.raises(ValidationError, match=r"^message integer 9007199254740992"):
        encode_payload("message", {"n": 2**53})
