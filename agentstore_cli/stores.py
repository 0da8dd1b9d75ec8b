"""Opening the configured stores for the CLI: a target read from its own env file, and
errors naming the side. What a store is called and counts is the backend's to say
(`storage.backends`, `StorageBackend.count`)."""

from __future__ import annotations

import os
from typing import Any

from dotenv import dotenv_values

from storage.base import StorageBackend
from storage.config import Settings, load_settings
from storage.errors import ConfigError, StorageError
from storage.factory import create_storage_client


def target_settings(env_file: str | os.PathLike[str]) -> Settings:
    """Settings read from `env_file` alone: nothing from the environment or `.env` leaks in.

    A field the file does not set takes its default, so settings of the source's backend
    cannot turn the target file's store into another backend's.
    """
    found = {
        key.lower(): value
        for key, value in dotenv_values(env_file).items()
        if key and value not in (None, "")
    }
    overrides: dict[str, Any] = {
        name: found.get(name, info.default) for name, info in Settings.model_fields.items()
    }
    try:
        return load_settings(_env_file=None, **overrides)
    except ConfigError as exc:
        raise ConfigError(f"target {env_file}: {exc}") from None


def open_store(settings: Settings, side: str) -> StorageBackend:
    """`create_storage_client(settings)`, with errors naming the side (source or target)."""
    try:
        return create_storage_client(settings)
    except StorageError as exc:
        raise type(exc)(f"{side}: {exc}") from None
