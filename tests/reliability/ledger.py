"""What the producer threads sent, and which of those saves the broker acknowledged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["state", "task", "conversation", "transaction"]


@dataclass(frozen=True, slots=True)
class Save:
    """One `save_*` call. `op_id` is None when the call raised `PublishError`: the op was
    not acknowledged, yet may have reached the broker (a timeout is not a refusal)."""

    kind: Kind
    owner: str  # agent id, conversation id or case id
    sub: str  # state id or task id; "" for the others
    version: str
    payload: Any  # the dict saved; for transactions the list of transactions
    op_id: str | None
    thread: int
    seq: int

    @property
    def acked(self) -> bool:
        return self.op_id is not None
