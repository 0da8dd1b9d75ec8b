"""Picks the backend from configuration: the one named, else PostgreSQL, else Cosmos DB."""

from __future__ import annotations

from typing import Any

from .base import StorageBackend
from .config import Settings, load_settings
from .errors import ConfigError


def create_storage_client(
    settings: Settings | None = None, *, create_schema: bool = True, **overrides: Any
) -> StorageBackend:
    """The backend `AGENTSTORE_BACKEND` names (`postgres`, `cosmos` or `memory`); unset:
    PostgreSQL if `POSTGRES_CONNECTION_STRING` is set, else Cosmos DB if `COSMOS_ENDPOINT`
    and `COSMOS_KEY` are, else `ConfigError` naming the variables to set.

    With `create_schema=False`, PostgreSQL applies no migration (it raises
    `SchemaNotReadyError` if one is pending); Cosmos DB still creates a missing database
    and its containers.
    """
    settings = settings or load_settings(**overrides)
    backend = settings.agentstore_backend
    if backend == "memory":
        from .memory import InMemoryStorageClient

        return InMemoryStorageClient()
    if backend == "postgres" or (
        backend is None and settings.postgres_connection_string is not None
    ):
        from .postgres import PostgreSQLClient

        return PostgreSQLClient(settings=settings, create_schema=create_schema)
    if backend == "cosmos" or (settings.cosmos_endpoint and settings.cosmos_key is not None):
        from .cosmos import CosmosDBClient

        return CosmosDBClient(settings=settings)
    raise ConfigError(
        "no storage backend configured: set POSTGRES_CONNECTION_STRING "
        "(e.g. postgresql://user:password@127.0.0.1:5432/agentstore), or COSMOS_ENDPOINT and "
        "COSMOS_KEY (COSMOS_DATABASE_NAME defaults to transaction_review), in the environment "
        "or in .env; or AGENTSTORE_BACKEND=memory for a store in this process's memory (tests)"
    )
