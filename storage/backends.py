"""The registry of backends: each once, with how settings select it and where its class lives.

A backend's class is imported only when a configuration selects it, so `import storage` loads
no driver. Adding a backend is one entry here and its module; its class describes, identifies
and counts its store itself (`StorageBackend.describe`, `identity`, `secrets`, `count`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .base import StorageBackend
    from .config import Settings


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend: its `AGENTSTORE_BACKEND` name, its class, and what configures it."""

    name: str
    path: str  # "module:Class" in this package, imported on first use
    # Whether settings configure it: the choice when AGENTSTORE_BACKEND is unset, and whose
    # secrets to scrub. None: chosen only by name.
    configured: Callable[[Settings], bool] | None
    hint: str  # what to set to use it, for the error saying no backend is configured

    def load(self) -> type[StorageBackend]:
        """The backend's class, its module (and driver) imported now."""
        module, _, name = self.path.partition(":")
        cls: type[StorageBackend] = getattr(importlib.import_module(module, __package__), name)
        return cls


# In order of preference when AGENTSTORE_BACKEND is unset.
BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "postgres",
            ".postgres:PostgreSQLClient",
            lambda s: s.postgres_connection_string is not None,
            "POSTGRES_CONNECTION_STRING (e.g. postgresql://user:password@127.0.0.1:5432/agentstore)",
        ),
        Backend(
            "cosmos",
            ".cosmos:CosmosDBClient",
            lambda s: bool(s.cosmos_endpoint) and s.cosmos_key is not None,
            "COSMOS_ENDPOINT and COSMOS_KEY (COSMOS_DATABASE_NAME defaults to transaction_review)",
        ),
        Backend(
            "memory",
            ".memory:InMemoryStorageClient",
            None,
            "AGENTSTORE_BACKEND=memory for a store in this process's memory (tests)",
        ),
    )
}


def how_to_configure() -> str:
    """What to set for any one backend: `"set X (e.g. ...), or Y and Z (...), or ..."`."""
    return "set " + ", or ".join(backend.hint for backend in BACKENDS.values())


def chosen(settings: Settings) -> Backend | None:
    """The backend `AGENTSTORE_BACKEND` names; unset, the first one `settings` configure."""
    if settings.agentstore_backend is not None:
        return BACKENDS[settings.agentstore_backend]
    return next((b for b in BACKENDS.values() if b.configured and b.configured(settings)), None)


def backend_class(settings: Settings) -> type[StorageBackend]:
    """The class of the chosen backend; `ConfigError` saying what to set if there is none."""
    backend = chosen(settings)
    if backend is None:
        raise ConfigError(
            f"no storage backend configured: {how_to_configure()}, in the environment or in .env"
        )
    return backend.load()


def describe(settings: Settings) -> str:
    """The store `settings` configure, for humans, secrets masked (`ConfigError` if none)."""
    return backend_class(settings).describe(settings)


def identity(settings: Settings) -> tuple[str, ...]:
    """What makes two configurations the same store; no secret (`ConfigError` if none)."""
    return backend_class(settings).identity(settings)


def secrets(settings: Settings) -> list[str]:
    """Every secret `settings` hold for the chosen backend and any other they configure."""
    found = chosen(settings)
    wanted = [
        backend
        for backend in BACKENDS.values()
        if backend == found or (backend.configured and backend.configured(settings))
    ]
    return [secret for backend in wanted for secret in backend.load().secrets(settings)]
