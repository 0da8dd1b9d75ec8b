"""The worker's knobs, read from the environment once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass

from storage.errors import ConfigError


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Batching, retry and recovery settings; each field names its environment variable."""

    batch_max: int = 2000  # AGENTSTORE_BATCH_MAX: ops per apply call
    batch_wait_ms: float = 5.0  # AGENTSTORE_BATCH_WAIT_MS: how long to wait to fill a batch
    recovery_after_s: float = 20.0  # AGENTSTORE_RECOVERY_AFTER_S: out of queue, unconfirmed
    reaper_interval_s: float = 1.0  # AGENTSTORE_REAPER_INTERVAL_S
    reaper_batch: int = 1000  # AGENTSTORE_REAPER_BATCH: republished per round at most
    retry_tries: int = 6  # AGENTSTORE_RETRY_TRIES: tries of a transiently failing apply
    retry_max_s: float = 30.0  # AGENTSTORE_RETRY_MAX_S: and the time they may take
    visibility_timeout_s: int = 300  # AGENTSTORE_VISIBILITY_TIMEOUT_S: kombu's own redelivery
    prune_interval_s: float = 3600.0  # AGENTSTORE_PRUNE_INTERVAL_S: retention job period
    confirm_ttl_s: float = 600.0  # AGENTSTORE_CONFIRM_TTL_S: how long wait() sees a confirmation


_VARS = {
    "batch_max": ("AGENTSTORE_BATCH_MAX", int, 1),
    "batch_wait_ms": ("AGENTSTORE_BATCH_WAIT_MS", float, 0),
    "recovery_after_s": ("AGENTSTORE_RECOVERY_AFTER_S", float, 0.1),
    "reaper_interval_s": ("AGENTSTORE_REAPER_INTERVAL_S", float, 0.01),
    "reaper_batch": ("AGENTSTORE_REAPER_BATCH", int, 1),
    "retry_tries": ("AGENTSTORE_RETRY_TRIES", int, 1),
    "retry_max_s": ("AGENTSTORE_RETRY_MAX_S", float, 0),
    "visibility_timeout_s": ("AGENTSTORE_VISIBILITY_TIMEOUT_S", int, 1),
    "prune_interval_s": ("AGENTSTORE_PRUNE_INTERVAL_S", float, 0.1),
    "confirm_ttl_s": ("AGENTSTORE_CONFIRM_TTL_S", float, 1),
}


def load_worker_settings() -> WorkerSettings:
    """Settings from the environment; a malformed value raises `ConfigError` naming it."""
    values: dict[str, int | float] = {}
    for field, (var, kind, minimum) in _VARS.items():
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{var} must be a {kind.__name__}, got {raw[:40]!r}") from None
        if value < minimum:
            raise ConfigError(f"{var} must be at least {minimum}, got {value}")
        values[field] = value
    return WorkerSettings(**values)  # type: ignore[arg-type]
