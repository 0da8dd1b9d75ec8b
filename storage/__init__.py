"""agentstore storage: the `StorageClient` contract; PostgreSQL, Cosmos DB, in-memory backends."""

from typing import TYPE_CHECKING, Any

from .base import StorageBackend, StorageClient
from .config import Settings, load_settings
from .errors import (
    ConfigError,
    StorageError,
    StoreUnavailableError,
    TransientStorageError,
    ValidationError,
)
from .factory import create_storage_client
from .ops import Op, make_op, parse_op

if TYPE_CHECKING:
    from .cosmos import CosmosDBClient
    from .memory import InMemoryStorageClient
    from .postgres import PostgreSQLClient

__all__ = [
    "ConfigError",
    "CosmosDBClient",
    "InMemoryStorageClient",
    "Op",
    "PostgreSQLClient",
    "Settings",
    "StorageBackend",
    "StorageClient",
    "StorageError",
    "StoreUnavailableError",
    "TransientStorageError",
    "ValidationError",
    "create_storage_client",
    "load_settings",
    "make_op",
    "parse_op",
]


def __getattr__(name: str) -> Any:
    # Backends import their drivers lazily, so `import storage` needs neither installed.
    if name == "PostgreSQLClient":
        from .postgres import PostgreSQLClient

        return PostgreSQLClient
    if name == "CosmosDBClient":
        from .cosmos import CosmosDBClient

        return CosmosDBClient
    if name == "InMemoryStorageClient":
        from .memory import InMemoryStorageClient

        return InMemoryStorageClient
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
