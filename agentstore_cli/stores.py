"""Opening the configured stores for the CLI: a target read from its own env file, which
store a configuration names, how it is shown to humans, a cheap count for progress totals."""

from __future__ import annotations

import os
from typing import Any

from dotenv import dotenv_values

from storage.base import StorageBackend
from storage.config import Settings, load_settings, mask_url
from storage.errors import ConfigError, StorageError
from storage.factory import create_storage_client
from storage.records import StreamKind

# Only for progress totals; the count check scans instead, through the storage contract.
_PG_TABLES: dict[StreamKind, str] = {
    "tombstone": "agentstore_tombstones",
    "state": "agent_states",
    "task": "agent_tasks",
    "conversation": "conversations",
    "transaction": "transactions",
}


def quick_count(settings: Settings, kind: StreamKind) -> int | None:
    """A cheap record count for progress totals: PostgreSQL's `count(*)`, else None."""
    secret = settings.postgres_connection_string
    if secret is None or settings.agentstore_backend not in (None, "postgres"):
        return None
    import psycopg2

    try:
        conn = psycopg2.connect(secret.get_secret_value(), connect_timeout=5)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {_PG_TABLES[kind]}")
            row = cur.fetchone()
            return int(row[0]) if row else None
    except psycopg2.Error:
        return None
    finally:
        conn.close()


def target_settings(env_file: str | os.PathLike[str]) -> Settings:
    """Settings read from `env_file` alone: nothing from the environment or `.env` leaks in.

    A field the file does not set takes its default, so a source configured through
    `POSTGRES_CONNECTION_STRING` cannot make a Cosmos DB target file into a PostgreSQL one.
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


def store_identity(settings: Settings) -> tuple[str, ...]:
    """What makes two configurations the same store; holds no secret."""
    if settings.agentstore_backend == "memory":
        return ("memory",)
    secret = settings.postgres_connection_string
    if secret is not None and settings.agentstore_backend != "cosmos":
        import psycopg2.extensions

        try:
            dsn = psycopg2.extensions.parse_dsn(secret.get_secret_value())
        except psycopg2.ProgrammingError:
            raise ConfigError("POSTGRES_CONNECTION_STRING cannot be parsed") from None
        host = (dsn.get("host") or dsn.get("hostaddr") or "").split(",")[0].lower()
        # Loopback by name, by address or through the socket is one server: refuse all alike.
        if host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/"):
            host = "localhost"
        port = (dsn.get("port") or "5432").split(",")[0]
        return ("postgres", host, port, dsn.get("dbname") or dsn.get("user") or "")
    if settings.cosmos_endpoint:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.cosmos_endpoint)
        host = (parts.hostname or "").lower()
        host = "localhost" if host in ("localhost", "127.0.0.1", "::1") else host
        return ("cosmos", host, str(parts.port or 443), settings.cosmos_database_name)
    return ("none",)


def describe(settings: Settings) -> str:
    """The configured store for humans, secrets masked."""
    if settings.agentstore_backend == "memory":
        return "in-memory store (this process only)"
    secret = settings.postgres_connection_string
    if secret is not None and settings.agentstore_backend != "cosmos":
        dsn = secret.get_secret_value()
        if "://" in dsn:
            return f"PostgreSQL {mask_url(dsn)}"
        _, host, port, db = store_identity(settings)
        return f"PostgreSQL host={host} port={port} dbname={db}"
    if settings.cosmos_endpoint:
        endpoint = mask_url(settings.cosmos_endpoint)
        return f"Cosmos DB {endpoint} database {settings.cosmos_database_name}"
    return "no store configured"


def open_store(settings: Settings, side: str) -> StorageBackend:
    """`create_storage_client(settings)`, with errors naming the side (source or target)."""
    try:
        return create_storage_client(settings)
    except StorageError as exc:
        raise type(exc)(f"{side}: {exc}") from None
