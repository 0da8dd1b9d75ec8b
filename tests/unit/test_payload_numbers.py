"""Numbers the stores cannot return unchanged are refused at the call, saying what to do."""

from __future__ import annotations

import pytest

from storage import ValidationError
from storage.ops import make_op
from storage.payload import encode_payload


@pytest.mark.parametrize(
    ("value", "advice"),
    [
        (1.0, "the int 1 or as a string"),
        (-0.0, "the int 0 or as a string"),
        (0.0, "the int 0 or as a string"),
        (1e16, "a string"),
        (2.0**53 - 1, "the int 9007199254740991 or as a string"),
        (1e300, "a string"),
        (-1.7976931348623157e308, "a string"),
    ],
)
def test_integral_floats_are_refused(value: float, advice: str) -> None:
    with pytest.raises(ValidationError, match=r"^state has the float .* save it as ") as exc:
        encode_payload("state", {"deep": [{"x": value}]})
    assert str(exc.value).endswith(advice)


@pytest.mark.parametrize("value", [0.5, -2.5, 1e-7, 5e-324, -5e-324, 123456.789, 2.0**51 + 0.5])
def test_floats_with_a_fractional_part_are_kept(value: float) -> None:
    assert encode_payload("state", {"x": value}) == f'{{"x":{value!r}}}'


def test_the_field_is_named_for_every_number_rule() -> None:
    with pytest.raises(ValidationError, match=r"transactions\[1\] has the float 2\.0,"):
        make_op("save_transactions", {"case_id": "c", "transactions": [{"a": 1}, {"a": 2.0}]})
    with pytest.raises(ValidationError, match=r"^message integer 9007199254740992"):
        encode_payload("message", {"n": 2**53})
