"""TLS: `rediss://` broker URLs and PostgreSQL `sslmode` reach the drivers unchanged and
work; certificate verification stays on (Redis, and Cosmos DB beyond loopback)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import warnings
from typing import Any, ClassVar

import psycopg2
import pytest
import redis

from agentstore_cli.launch import EMULATOR_KEY, CosmosServer, RedisServer
from broker.publisher import Publisher
from producer import Producer, PublishError
from storage import CosmosDBClient, PostgreSQLClient, StorageError, load_settings
from storage.pg_url import options, with_options
from tests.integration.helpers import rows
from tests.plugin import ROOT, WorkerFactory
from tests.queued import op_id_of
from tests.security.tls import tls_redis

__all__ = ["tls_redis"]
REMOTE = "rediss://:pw@broker.example.com:6380/3?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
SOURCES = [ROOT / d for d in ("storage", "producer", "worker", "agentstore_cli")]


def test_rediss_url_reaches_redis_py_unchanged() -> None:
    assert load_settings(celery_broker_url=REMOTE).celery_broker_url.get_secret_value() == REMOTE
    publisher = Publisher(REMOTE)  # redis-py connects lazily: nothing is dialled here
    pool = publisher.redis.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("broker.example.com", 6380, 3)
    assert kwargs["password"] == "pw" and kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    publisher.close()


def test_the_worker_takes_the_rediss_url_unchanged() -> None:
    code = (
        "import json, worker.app as a; "
        "print(json.dumps([a.app.conf.broker_url, a.app.conf.broker_transport]))"
    )
    env = {**os.environ, "CELERY_BROKER_URL": REMOTE}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    url, transport = json.loads(out.stdout.strip().splitlines()[-1])
    assert url == REMOTE and transport == "worker.transport:Transport"


def test_producer_and_worker_over_tls_and_a_certificate_is_verified(
    tls_redis: RedisServer, database: str, start_worker: WorkerFactory
) -> None:
    worker = start_worker(tls_redis.url, database)
    with Producer(broker_url=tls_redis.url, postgres_connection_string=database) as prod:
        op_id = op_id_of(prod.save_state("agent", "over-tls", {"secure": True}))
        prod.wait([op_id], timeout=30)
        assert prod.get_state("agent", "over-tls") == {"secure": True}
    # Without our CA the server's certificate is unknown: refused, not silently accepted.
    untrusted = tls_redis.url.split("&ssl_ca_certs=")[0]  # no CA: verified against the system's
    with (
        Producer(broker_url=untrusted, publish_timeout=1) as prod,
        pytest.raises(PublishError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        prod.save_state("agent", "s", {"x": 0.5})
    assert worker.alive()


def test_postgres_sslmode_reaches_libpq_unchanged(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{database}?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3"
    seen: list[Any] = []

    def capture(*args: Any, **kwargs: Any) -> None:
        seen.append(args)
        raise psycopg2.OperationalError("captured")

    monkeypatch.setattr("psycopg2.connect", capture)
    with pytest.raises(StorageError):
        PostgreSQLClient(postgres_connection_string=url)
    assert seen and seen[0][0] == url, "the DSN is handed to psycopg2 exactly as configured"


def test_postgres_sslmode_require_is_enforced(database: str) -> None:
    if options(database).get("host", "").startswith("/"):
        pytest.skip("libpq never uses TLS over a Unix socket (the embedded server's)")
    require = with_options(database, sslmode="require")
    (ssl,) = rows(database, "SHOW ssl")[0]
    if ssl == "off":
        # libpq got sslmode=require: it refuses a server without TLS rather than go plain.
        with pytest.raises(StorageError, match="SSL"):
            PostgreSQLClient(postgres_connection_string=require)
    else:
        with PostgreSQLClient(postgres_connection_string=require) as store:
            store.save_state("a", "s", {"x": 0.5})
        encrypted = rows(
            database,
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'agentstore'",
        )
        assert encrypted == [(True,)]
    disable = with_options(database, sslmode="disable")
    with PostgreSQLClient(postgres_connection_string=disable) as store:
        store.save_state("a", "s", {"x": 0.5})


_INSECURE = re.compile(
    r"connection_verify|verify\s*=\s*False|CERT_NONE|ssl_cert_reqs\s*=\s*['\"]?none"
    r"|check_hostname\s*=\s*False|_create_unverified_context|disable_warnings"
    r"|PYTHONHTTPSVERIFY|InsecureRequestWarning",
    re.IGNORECASE,
)


def test_no_code_turns_certificate_verification_off() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for source in SOURCES
        for path in sorted(source.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _INSECURE.search(line)
    ]
    assert not hits, "\n".join(hits)


class _FakeContainer:
    def __init__(self, path: str) -> None:
        self._path = path

    def read(self) -> dict[str, Any]:
        return {"partitionKey": {"paths": [self._path]}}


class _FakeCosmos:
    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        self.calls.append({"endpoint": endpoint, **kwargs})

    def create_database_if_not_exists(self, name: str) -> _FakeCosmos:
        return self

    def create_container_if_not_exists(self, name: str, key: Any, **_: Any) -> _FakeContainer:
        return _FakeContainer(key["paths"][0])

    def close(self) -> None:
        pass


def test_cosmos_client_leaves_verification_on_for_a_real_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("storage.cosmos_sdk.CosmosClient", _FakeCosmos)
    before = list(warnings.filters)
    endpoint = "https://myaccount.documents.azure.com:443/"
    client = CosmosDBClient(cosmos_endpoint=endpoint, cosmos_key=EMULATOR_KEY)
    client.close()
    (call,) = _FakeCosmos.calls
    assert call["endpoint"] == endpoint
    assert call.get("connection_verify", True) is True
    assert not any("verify" in k or "ssl" in k or "cert" in k for k in call), call
    assert warnings.filters == before, "no TLS warning is silenced for a remote host"


def test_cosmos_certificate_is_verified_for_any_name_but_loopback(
    cosmos_server: CosmosServer,
) -> None:
    server = cosmos_server
    name = f"t{uuid.uuid4().hex[:8]}"
    # The same server: by the name the SDK exempts (emulator rule) it is accepted...
    ok = CosmosDBClient(
        cosmos_endpoint=server.endpoint, cosmos_key=server.key, cosmos_database_name=name
    )
    ok.close()
    # ...by another name for the same address its self-signed certificate is refused.
    other = f"https://127.1:{server.port}/"
    with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
        CosmosDBClient(cosmos_endpoint=other, cosmos_key=server.key, cosmos_database_name=name)
