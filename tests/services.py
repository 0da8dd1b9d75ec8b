"""Where the test suite finds its services, and what it does when one is missing.

On CI (`CI=true`) a missing service fails the test; on a developer's machine it skips loudly.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest

from storage.pg_url import with_database

PG_ADMIN_URL = os.environ.get("AGENTSTORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AGENTSTORE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Fail on CI, skip loudly elsewhere."""
    if on_ci():
        pytest.fail(f"required service unavailable on CI: {reason}")
    pytest.skip(f"SERVICE MISSING, backend NOT tested: {reason}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pg_admin() -> psycopg2.extensions.connection:
    try:
        conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL at {PG_ADMIN_URL}: {exc}")
    conn.autocommit = True
    return conn


@contextmanager
def fresh_pg_database(prefix: str = "agentstore_t") -> Iterator[str]:
    """A new empty database for the duration of the block; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = pg_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield with_database(PG_ADMIN_URL, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
