"""Retention: what old data and old tombstones a store may drop. Off by default."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .records import STORED_AS, Kind, StreamKind

DAY_S = 86_400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """Limits per kind; None keeps everything of that kind.

    Tombstones are kept `tombstone_grace_s` (default 7 days), which must exceed the longest
    time an op can wait before it is applied (queue backlog, recovery, a dead-letter replay):
    an op older than its tombstone that arrives after the tombstone is gone is applied again.
    """

    keep_messages: int | None = None
    message_max_age_s: float | None = None
    finished_task_max_age_s: float | None = None
    finished_statuses: tuple[str, ...] = ("done", "completed", "finished", "failed", "cancelled")
    transaction_max_age_s: float | None = None
    # Newest checkpoints kept per (thread, checkpoint namespace), with what they need to
    # load (`storage.checkpoint_prune`).
    keep_checkpoints: int | None = None
    tombstone_grace_s: float = 7 * DAY_S
    batch_size: int = 1_000

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        def seconds(days: float | None) -> float | None:
            return None if days is None else days * DAY_S

        return cls(
            keep_messages=settings.agentstore_retain_messages,
            message_max_age_s=seconds(settings.agentstore_retain_messages_days),
            finished_task_max_age_s=seconds(settings.agentstore_retain_finished_tasks_days),
            finished_statuses=tuple(
                s.strip()
                for s in settings.agentstore_finished_task_statuses.split(",")
                if s.strip()
            ),
            transaction_max_age_s=seconds(settings.agentstore_retain_transactions_days),
            keep_checkpoints=settings.agentstore_retain_checkpoints,
            tombstone_grace_s=settings.agentstore_tombstone_grace_days * DAY_S,
        )


def category(kind: StreamKind, what: str) -> str:
    """The prune category `"<table or container>:<what>"`, e.g. `"conversations:expired"`."""
    return f"{STORED_AS[kind]}:{what}"


# Kinds whose deletes leave a deleted row (a tombstone row) that retention later drops.
ROW_DELETED_KINDS: tuple[Kind, ...] = (
    "state",
    "task",
    "transaction",
    "checkpoint",
    "checkpoint_blob",
    "checkpoint_write",
)


def prune_limits(policy: RetentionPolicy) -> dict[str, float]:
    """Per prune category `policy` enables, in the order stores prune them: its limit.

    A category is "<table or container>:<what>" (`category`); its limit is a message count
    for `conversations:over_count` and an age in seconds for every other one.
    """
    limits: dict[str, float] = {}
    if policy.keep_messages is not None:
        limits[category("conversation", "over_count")] = policy.keep_messages
    if policy.message_max_age_s is not None:
        limits[category("conversation", "expired")] = policy.message_max_age_s
    if policy.finished_task_max_age_s is not None:
        limits[category("task", "expired")] = policy.finished_task_max_age_s
    if policy.transaction_max_age_s is not None:
        limits[category("transaction", "expired")] = policy.transaction_max_age_s
    for kind in ROW_DELETED_KINDS:
        limits[category(kind, "tombstones")] = policy.tombstone_grace_s
    limits[category("tombstone", "expired")] = policy.tombstone_grace_s
    return limits
