"""`make test` on a machine without PostgreSQL or Redis: embedded ones for the session.

A pytest plugin (`-p tests.embedded_fallback`). Off CI, for each of PostgreSQL and Redis: the
server named by AGENTSTORE_TEST_PG / AGENTSTORE_TEST_REDIS if it answers, else the one on the
default local port, else an embedded server (`agentstore_cli.embedded`) started for the
session; the variable is then pointed at it before `tests.services` reads it. The test
header says which. On CI (`CI=true`) it does nothing: there a missing service must fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from agentstore_cli.embedded import (
    LOCAL_POSTGRES_URL,
    LOCAL_REDIS_URL,
    Services,
    on_ci,
    resolve_services,
)

_SERVICES = pytest.StashKey[Services]()
_DATA_DIR = pytest.StashKey[Path]()


def fallback_services(
    data_dir: Path,
    local_postgres: str | None = LOCAL_POSTGRES_URL,
    local_redis: str | None = LOCAL_REDIS_URL,
) -> Services:
    """The servers the tests should use; starts embedded ones only where nothing answers."""
    environ = {}
    if os.environ.get("AGENTSTORE_TEST_PG"):
        environ["POSTGRES_CONNECTION_STRING"] = os.environ["AGENTSTORE_TEST_PG"]
    if os.environ.get("AGENTSTORE_TEST_REDIS"):
        environ["CELERY_BROKER_URL"] = os.environ["AGENTSTORE_TEST_REDIS"]
    # database="postgres": tests make their own databases; they need the admin one.
    return resolve_services(
        data_dir,
        environ=environ,
        dotenv=None,
        database="postgres",
        local_postgres=local_postgres,
        local_redis=local_redis,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if on_ci() or hasattr(config, "workerinput"):
        return
    data_dir = Path(tempfile.mkdtemp(prefix="agentstore-test-services-"))
    services = fallback_services(data_dir)
    config.stash[_SERVICES] = services
    config.stash[_DATA_DIR] = data_dir
    os.environ["AGENTSTORE_TEST_PG"] = services.postgres.url
    os.environ["AGENTSTORE_TEST_REDIS"] = services.redis.url
    module = sys.modules.get("tests.services")
    if module is not None:  # imported already: its module-level URLs were read too early
        module.PG_ADMIN_URL = services.postgres.url  # type: ignore[attr-defined]
        module.REDIS_URL = services.redis.url  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    services = config.stash.get(_SERVICES, None)
    return [] if services is None else [f"test services: {line}" for line in services.lines()]


def pytest_unconfigure(config: pytest.Config) -> None:
    services = config.stash.get(_SERVICES, None)
    if services is not None:
        services.stop()
        shutil.rmtree(config.stash[_DATA_DIR], ignore_errors=True)
