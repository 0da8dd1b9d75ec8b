"""Fixtures for the soak: a test-owned Redis with AOF (the database and workers come from
the test services)."""

from __future__ import annotations

import pytest

from agentstore_cli.launch import RedisServer
from tests.plugin import RedisFactory


@pytest.fixture
def aof_redis(start_redis: RedisFactory) -> RedisServer:
    """A redis-server that fsyncs every write: a restart keeps every acknowledged publish."""
    return start_redis(aof="always")
