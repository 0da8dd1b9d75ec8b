"""Fixtures for the soak: a test-owned Redis with AOF, a fresh database, real workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RedisServer, database, start_worker
from tests.services import fresh_pg_database

__all__ = ["aof_redis", "database", "soak_database", "start_worker"]


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that fsyncs every write: a restart keeps every acknowledged publish."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, aof=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def soak_database() -> Iterator[str]:
    with fresh_pg_database("agentstore_soak") as url:
        yield url
