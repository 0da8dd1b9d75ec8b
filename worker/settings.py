"""The worker's knobs: `AGENTSTORE_*` from the environment and `.env`, checked at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.config import read_settings


class WorkerSettings(BaseSettings):
    """Batching, retry and recovery settings; each field is read from `AGENTSTORE_` + its
    name in capitals."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTSTORE_",
        env_file=".env",
        extra="ignore",
        env_ignore_empty=True,
        frozen=True,
    )

    batch_max: int = Field(4000, ge=1)  # ops per apply call
    batch_wait_ms: float = Field(50.0, ge=0)  # to fill a batch, unless a reader waits
    recovery_after_s: float = Field(20.0, ge=0.1)  # out of the queue, unconfirmed, no heartbeat
    reaper_interval_s: float = Field(1.0, ge=0.01)
    reaper_batch: int = Field(1000, ge=1)  # messages per Redis call of a reaper round
    retry_tries: int = Field(6, ge=1)  # tries of a transiently failing apply
    retry_max_s: float = Field(30.0, ge=0)  # and the time they may take
    visibility_timeout_s: int = Field(300, ge=1)  # kombu's own redelivery
    prune_interval_s: float = Field(3600.0, ge=0.1)  # retention job period
    confirm_ttl_s: float = Field(600.0, ge=1)  # how long wait() sees a confirmation
    metrics_port: int | None = Field(None, ge=1, le=65535)  # /metrics; off when unset
    log_format: Literal["text", "json"] = "text"  # json: one object per line


def load_worker_settings() -> WorkerSettings:
    """Settings from the environment and `.env`; a malformed value raises `ConfigError`
    naming its variable."""
    return read_settings(WorkerSettings)
