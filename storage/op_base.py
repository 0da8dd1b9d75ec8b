"""What every op model shares: strict frozen models, the op id and version rules, id fields."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from .ids import check_id
from .payload import encode_payload
from .versions import VERSION_RE

OP_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def id_field(field: str) -> Any:
    return BeforeValidator(lambda v: check_id(field, v))


# Validation context of an op decoded from a text `storage.payload.decode_plain` vouched for.
PLAIN = {"plain_payload": True}


def payload_field(field: str) -> Any:
    def check(value: Any, info: ValidationInfo) -> Any:
        # decode_plain vouched for every payload of a plain body. Anything else gets every
        # check, and its error.
        if info.context is PLAIN and type(value) is dict:
            return value
        encode_payload(field, value)
        return value

    return BeforeValidator(check)


def check_version(value: object) -> str:
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise ValueError(
            "version must be a sortable string of 1-64 characters from [0-9A-Za-z._:-]"
        )
    return value


def check_op_id(value: object) -> str:
    if not isinstance(value, str) or not OP_ID_RE.match(value):
        raise ValueError("op id must be 1-64 characters from [0-9A-Za-z_-]")
    return value


Version = Annotated[str, BeforeValidator(check_version)]
OpId = Annotated[str, BeforeValidator(check_op_id)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpBase(Strict):
    id: OpId
    version: Version
