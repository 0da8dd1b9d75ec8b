"""Services configured with secrets: a password-protected Redis and a PostgreSQL role."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from agentstore_cli.launch import RedisServer
from storage import StorageClient
from storage.pg_url import options, with_credentials
from tests.contract.conftest import Backend
from tests.services import fresh_pg_database, pg_admin, started

# Random per run, so finding one in any output can only mean it leaked from this run.
PG_SECRET = f"pg-Secret-{secrets.token_hex(6)}"
REDIS_SECRET = f"redis-Secret-{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def secret_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A test-owned redis-server that requires `REDIS_SECRET` (in its `url`)."""
    directory = tmp_path_factory.mktemp("redis-secret")
    with ExitStack() as stack:
        yield started(stack, lambda: RedisServer(directory, password=REDIS_SECRET))


@pytest.fixture
def pg_url_with_password() -> Iterator[str]:
    """A fresh database owned by a new role whose password is `PG_SECRET`; yields its URL.

    The local server trusts loopback, so any password works: what matters is that it is
    in the URL every component is given.
    """
    role = f"agentstore_sec_{secrets.token_hex(4)}"
    admin = pg_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (PG_SECRET,))
        with fresh_pg_database("agentstore_sec") as url:
            name = options(url)["dbname"]
            with admin.cursor() as cur:
                cur.execute(f'ALTER DATABASE "{name}" OWNER TO {role}')
            yield with_credentials(url, role, PG_SECRET)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


@pytest.fixture(scope="module", params=["postgres", "cosmos"])
def store(request: pytest.FixtureRequest) -> Iterator[StorageClient]:
    """A fresh store on each real backend."""
    with ExitStack() as stack:
        yield Backend.of(request, stack).client()
