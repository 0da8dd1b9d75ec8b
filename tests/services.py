"""Where the test suite finds its services, and what it does when one is missing.

On CI (`CI=true`) a missing service fails the test; on a developer's machine it skips loudly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import NoReturn, TypeVar

import psycopg2
import pytest

from agentstore_cli.embedded import on_ci
from agentstore_cli.launch import ServiceError, fresh_database

# Read at call time (`services.PG_ADMIN_URL`): the embedded fallback may repoint them.
PG_ADMIN_URL = os.environ.get("AGENTSTORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AGENTSTORE_TEST_REDIS", "redis://127.0.0.1:6379/0")

T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Fail on CI, skip loudly elsewhere."""
    if on_ci():
        pytest.fail(f"required service unavailable on CI: {reason}")
    pytest.skip(f"SERVICE MISSING, backend NOT tested: {reason}")


def started(stack: ExitStack, start: Callable[[], AbstractContextManager[T]]) -> T:
    """`stack.enter_context(start())`; a service that cannot start is `unavailable`."""
    try:
        return stack.enter_context(start())
    except ServiceError as exc:
        unavailable(str(exc))


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
    with ExitStack() as stack:
        yield started(stack, lambda: fresh_database(PG_ADMIN_URL, prefix))
