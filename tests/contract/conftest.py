"""Backends for the contract suite: every test runs once per real server, and in memory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from agentstore_cli.launch import CosmosServer
from storage import StorageBackend, StorageClient, create_storage_client
from tests.services import fresh_pg_database


class Backend:
    """Makes fresh, isolated stores on one real server (or in this process's memory)."""

    def __init__(self, name: str, stack: ExitStack, cosmos: CosmosServer | None = None) -> None:
        self.name = name
        self._stack = stack
        self._cosmos = cosmos

    @classmethod
    def of(cls, request: pytest.FixtureRequest, stack: ExitStack) -> Backend:
        """The backend named by a fixture's `request.param`, on the session's servers."""
        name: str = request.param
        cosmos = request.getfixturevalue("cosmos_server") if name == "cosmos" else None
        return cls(name, stack, cosmos)

    def fresh_env(self) -> dict[str, str]:
        """Environment variables that point `create_storage_client()` at a new empty store."""
        if self.name == "memory":
            return {"AGENTSTORE_BACKEND": "memory"}  # every client is a store of its own
        if self.name == "postgres":
            url = self._stack.enter_context(fresh_pg_database())
            return {"POSTGRES_CONNECTION_STRING": url}
        assert self._cosmos is not None, "a Cosmos DB backend is made with its server"
        return {
            "COSMOS_ENDPOINT": self._cosmos.endpoint,
            "COSMOS_KEY": self._cosmos.key,
            "COSMOS_DATABASE_NAME": f"t_{uuid.uuid4().hex[:12]}",
        }

    def client(self, env: dict[str, str] | None = None) -> StorageBackend:
        settings: dict[str, Any] = {k.lower(): v for k, v in (env or self.fresh_env()).items()}
        # Explicit None keeps a POSTGRES_CONNECTION_STRING in the environment from winning.
        settings.setdefault("postgres_connection_string", None)
        client = create_storage_client(**settings)
        self._stack.callback(client.close)
        return client


@pytest.fixture(scope="session", params=["postgres", "cosmos", "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with ExitStack() as stack:
        yield Backend.of(request, stack)


@pytest.fixture(scope="session")
def store(backend: Backend) -> StorageClient:
    """One store per backend per session; tests keep apart through `uid`."""
    return backend.client()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]
