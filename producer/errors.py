"""Errors the producer raises on top of the storage hierarchy and `broker.errors`."""

from __future__ import annotations

from broker.errors import PublishError
from storage.errors import StorageError


class BufferFullError(PublishError):
    """A buffered producer's buffer stayed full for `buffer_timeout`: this save was not taken."""


_SHOWN = 5


def _listed(op_ids: list[str]) -> str:
    more = len(op_ids) - _SHOWN
    return ", ".join(op_ids[:_SHOWN]) + (f" and {more:,} more" if more > 0 else "")


class DeadLetteredError(StorageError):
    """Ops were dead-lettered instead of applied.

    `errors` maps every such op id to its error (`op_ids` lists them); `op_id` and `error`
    are the first. They are reported by every `wait()` that covers them until the dead
    letters are replayed or purged.
    """

    def __init__(self, errors: dict[str, str], still_pending: int = 0) -> None:
        self.errors = dict(errors)
        self.op_ids = list(self.errors)
        self.op_id, self.error = next(iter(self.errors.items()))
        shown = "; ".join(f"{o}: {e[:200]}" for o, e in list(self.errors.items())[:_SHOWN])
        more = len(self.op_ids) - _SHOWN
        super().__init__(
            f"{len(self.op_ids):,} op(s) were dead-lettered: {shown}"
            + (f"; and {more:,} more" if more > 0 else "")
            + (f" ({still_pending:,} other op(s) still pending)" if still_pending else "")
        )


class LostOpsError(StorageError):
    """Ops that left the queue without a worker confirming them: the broker lost them.

    `op_ids` lists them all. Save them again.
    """

    def __init__(self, op_ids: list[str]) -> None:
        self.op_ids = list(op_ids)
        super().__init__(
            f"{len(self.op_ids):,} op(s) are neither queued, applied nor dead-lettered: the "
            "broker lost them (a Redis restart without AOF, FLUSHALL), their confirmation "
            "expired (AGENTSTORE_CONFIRM_TTL_S), or they were buffered by another producer, "
            f"whose ops only it can wait for; save them again: {_listed(self.op_ids)}"
        )


class BrokerUnavailableError(StorageError, TimeoutError):
    """`wait()` could not reach the broker until its timeout; whether the ops were applied
    is unknown."""
