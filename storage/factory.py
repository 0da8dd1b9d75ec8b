"""Picks the backend from configuration: the one named, else PostgreSQL, else Cosmos DB."""

from __future__ import annotations

from typing import Any

from .backends import backend_class
from .base import StorageBackend
from .config import Settings, load_settings


def create_storage_client(
    settings: Settings | None = None, *, create_schema: bool = True, **overrides: Any
) -> StorageBackend:
    """The backend `AGENTSTORE_BACKEND` names (`postgres`, `cosmos` or `memory`); unset:
    PostgreSQL if `POSTGRES_CONNECTION_STRING` is set, else Cosmos DB if `COSMOS_ENDPOINT`
    and `COSMOS_KEY` are, else `ConfigError` naming the variables to set (see
    `storage.backends`).

    With `create_schema=False`, PostgreSQL applies no migration (it raises
    `SchemaNotReadyError` if one is pending); Cosmos DB still creates a missing database
    and its containers.
    """
    settings = settings or load_settings(**overrides)
    return backend_class(settings).from_settings(settings, create_schema=create_schema)
