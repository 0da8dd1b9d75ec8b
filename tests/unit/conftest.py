"""A real redis-server for the worker's and reaper's Lua: fakeredis is for producer logic only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from agentstore_cli.launch import RedisServer


@pytest.fixture
def rds(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The module's redis-server, emptied; publishers in this test connect to it."""
    client = redis_server.client()
    client.flushall()
    monkeypatch.setattr("broker.publisher.connect", lambda url, timeout, sentinel=None: client)
    try:
        yield client
    finally:
        client.close()
