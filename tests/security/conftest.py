"""Services configured with secrets: a password-protected Redis and a PostgreSQL role."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
import redis

from storage import StorageClient
from storage.pg_url import options, with_credentials
from tests.contract.conftest import Backend
from tests.services import free_port, fresh_pg_database, pg_admin, unavailable

# Random per run, so finding one in any output can only mean it leaked from this run.
PG_SECRET = f"pg-Secret-{secrets.token_hex(6)}"
REDIS_SECRET = f"redis-Secret-{secrets.token_hex(6)}"


@dataclass
class SecretRedis:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, db: int = 0, password: str = REDIS_SECRET) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=10)


@pytest.fixture(scope="module")
def secret_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretRedis]:
    """A test-owned redis-server that requires `REDIS_SECRET`."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not on PATH")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis-secret")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--requirepass", REDIS_SECRET, "--dir", str(directory)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = SecretRedis(port, process)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                server.client().ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    unavailable(f"redis-server with a password on port {port} did not start")
                time.sleep(0.02)
        yield server
    finally:
        process.kill()
        process.wait(timeout=10)


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
        yield Backend(request.param, stack).client()
