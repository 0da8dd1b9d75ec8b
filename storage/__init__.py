"""agentstore storage: the `StorageClient` contract; PostgreSQL, Cosmos DB, in-memory backends."""

from typing import TYPE_CHECKING, Any

from .backends import BACKENDS
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
    for backend in BACKENDS.values():
        if backend.path.endswith(f":{name}"):
            return backend.load()
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
