"""Secrets never leak: a worker and a producer run with a PostgreSQL password, a Cosmos DB
key and a Redis password in their configuration, are made to fail in many ways, and every
log, exception, repr, CLI output, dead letter and broker key is searched for the secrets.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from agentstore_cli.launch import EMULATOR_KEY, CeleryWorker, CosmosServer, RedisServer, free_port
from broker import wire
from broker.deadletters import DeadLetters
from broker.publisher import Publisher
from producer import Producer
from storage import CosmosDBClient, PostgreSQLClient, StorageError, load_settings
from storage.pg_url import with_database, with_options
from tests.integration.helpers import execute, rows, wait_until
from tests.plugin import ROOT, worker_env
from tests.queued import op_id_of
from tests.security.conftest import PG_SECRET, REDIS_SECRET
from tests.services import unavailable

SECRETS = (PG_SECRET, REDIS_SECRET, EMULATOR_KEY)
# The console script installed with this interpreter (`pip install -e .`), wherever its venv.
AGENTSTORE = Path(sys.executable).parent / "agentstore"


class Evidence:
    """Everything the run printed, raised or stored, to be searched at the end."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def error(self, where: str, call: Callable[[], object]) -> BaseException:
        """Run `call`, which must raise; keep its message, repr and whole traceback."""
        try:
            call()
        except Exception as exc:
            self.add(where, f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}")
            return exc
        raise AssertionError(f"{where}: expected an error")

    def assert_clean(self) -> None:
        leaks = [(w, s) for w, text in self.texts for s in SECRETS if s in text]
        assert not leaks, "secret found in: " + ", ".join(sorted({w for w, _ in leaks}))


def _env(**config: str) -> dict[str, str]:
    return worker_env(**config, AGENTSTORE_RETRY_MAX_S="2")


def _debug_worker(env: dict[str, str], log_path: Path) -> CeleryWorker:
    """`celery -A worker worker` at DEBUG level: the most a log ever says."""
    return CeleryWorker(env, log_path, concurrency=1, loglevel="DEBUG", cwd=ROOT)


@pytest.fixture
def workers() -> Iterator[list[CeleryWorker]]:
    started: list[CeleryWorker] = []
    yield started
    for worker in started:
        worker.stop()


def _save_after_failing(broker: str, **settings: Any) -> None:
    with Producer(broker_url=broker, publish_timeout=1, **settings) as prod:
        prod.save_state("a", "s", {})


def _pg_path(evidence: Evidence, broker: str, pg_url: str) -> None:
    """Saves, a poisoned op, an invalid op, and killed connections, through the PG worker."""
    PostgreSQLClient(postgres_connection_string=pg_url).close()
    execute(pg_url, "ALTER TABLE agent_states ADD CONSTRAINT no_poison CHECK (state_id <> 'p')")
    with Producer(broker_url=broker, postgres_connection_string=pg_url) as prod:
        evidence.add("repr(Producer)", repr(prod))
        ok = [op_id_of(prod.save_state("agent", f"s{i}", {"i": i})) for i in range(20)]
        poisoned = op_id_of(prod.save_state("agent", "p", {"fails": True}))
        mid = "0123456789abcdef0123456789abcdef"
        bad = json.dumps({"op": "save_state", "id": mid, "version": "1", "args": {}})
        publisher = Publisher(broker)
        publisher.publish([(mid, wire.build_message(mid, [bad]))])
        evidence.add("Publisher", f"{publisher!r} {publisher.masked_url}")
        publisher.close()
        evidence.error("DeadLetteredError", lambda: prod.wait([*ok, poisoned], timeout=30))
        for _ in range(3):
            rows(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND usename = current_user "
                "AND application_name = 'agentstore' AND pid <> pg_backend_pid()",
            )
            after_kill = op_id_of(prod.save_state("agent", "after-kill", {"t": time.time()}))
            prod.wait([after_kill], timeout=30)
        assert prod.get_state("agent", "s19") == {"i": 19}
        evidence.add("repr(PostgreSQLClient)", repr(prod._store()))


def _cosmos_path(evidence: Evidence, broker: str, config: dict[str, str]) -> None:
    overrides = {k.lower(): v for k, v in config.items()}
    with Producer(load_settings(**overrides), broker_url=broker) as prod:
        prod.wait([op_id_of(prod.save_conversation("conv", {"hello": "world"}))], timeout=30)
        assert prod.get_conversation_history("conv") == [{"hello": "world"}]
        evidence.add("repr(CosmosDBClient)", repr(prod._store()))
    wrong = {**overrides, "cosmos_key": "bm90" + EMULATOR_KEY[4:]}
    exc = evidence.error("Cosmos DB, wrong key", lambda: CosmosDBClient(load_settings(**wrong)))
    assert isinstance(exc, StorageError) and "401" in str(exc)


def _errors_at_the_call(evidence: Evidence, redis_port: int, pg_url: str) -> None:
    wrong_password = f"redis://:a-wrong-password@127.0.0.1:{redis_port}/0"
    evidence.error("PublishError, wrong password", lambda: _save_after_failing(wrong_password))
    closed = f"redis://:{REDIS_SECRET}@127.0.0.1:{free_port()}/0"
    evidence.error("PublishError, closed port", lambda: _save_after_failing(closed))
    # host and port as options: they override a URL's address, or its socket directory.
    closed_pg = with_options(pg_url, host="127.0.0.1", port=str(free_port()))
    for where, url in (("closed port", closed_pg), ("no database", _missing_db(pg_url))):
        evidence.error(
            f"StorageError, {where}", partial(PostgreSQLClient, postgres_connection_string=url)
        )
    # An impossible port in the URL's address (a socket URL has none to replace).
    parts = urlsplit(pg_url)
    login = parts.netloc.rpartition("@")[0]
    bad_port = urlunsplit(parts._replace(netloc=f"{login}@127.0.0.1:99999"))
    evidence.error("ConfigError", lambda: load_settings(postgres_connection_string=bad_port))
    settings = load_settings(
        postgres_connection_string=pg_url,
        celery_broker_url=f"redis://:{REDIS_SECRET}@127.0.0.1:{redis_port}/0",
        cosmos_key=EMULATOR_KEY,
    )
    evidence.add("Settings", f"{settings!r} {settings} {settings.model_dump()}")
    evidence.add("Settings JSON", settings.model_dump_json())


def _cli(evidence: Evidence, env: dict[str, str], cwd: Path) -> None:
    for args in (["dlq", "list"], ["dlq", "list", "--json"], ["stats"], ["health"]):
        out = subprocess.run(
            [str(AGENTSTORE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        evidence.add(f"agentstore {' '.join(args)}", out.stdout + out.stderr)
        if args[-1] == "--json":
            assert "no_poison" in out.stdout, "the dead letters were listed"


def _value(client: redis.Redis, key: bytes) -> object:
    kind = cast(bytes, client.type(key)).decode()
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "zset":
        return client.zrange(key, 0, -1, withscores=True)
    return client.smembers(key) if kind == "set" else client.dump(key)


def _broker_contents(evidence: Evidence, server: RedisServer, databases: range) -> None:
    """Every value of every key: dead letters, pending messages, anything else."""
    for db in databases:
        client = server.client(db)
        for key in client.scan_iter():
            evidence.add(f"redis db {db} {key!r}", str(_value(client, key)))
        client.close()


def _missing_db(pg_url: str) -> str:
    return with_database(pg_url, "no_such_database")


def test_no_secret_in_logs_errors_reprs_cli_broker_or_dead_letters(
    secret_redis: RedisServer,
    pg_url_with_password: str,
    cosmos_server: CosmosServer,
    workers: list[CeleryWorker],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not AGENTSTORE.exists():
        unavailable(f"the agentstore CLI at {AGENTSTORE} (pip install -e .)")
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    pg_url = pg_url_with_password
    pg_broker, cosmos_broker, broken_broker = (secret_redis.url_for(db) for db in (0, 1, 2))
    cosmos_config = {
        "COSMOS_ENDPOINT": cosmos_server.endpoint,
        "COSMOS_KEY": EMULATOR_KEY,
        "COSMOS_DATABASE_NAME": f"sec_{uuid.uuid4().hex[:8]}",
    }
    pg_env = _env(CELERY_BROKER_URL=pg_broker, POSTGRES_CONNECTION_STRING=pg_url)
    envs = {
        "pg": pg_env,
        "cosmos": _env(CELERY_BROKER_URL=cosmos_broker, **cosmos_config),
        # Its database does not exist: it fails to open the store, and says so.
        "broken": _env(
            CELERY_BROKER_URL=broken_broker, POSTGRES_CONNECTION_STRING=_missing_db(pg_url)
        ),
    }
    for name, env in envs.items():
        workers.append(_debug_worker(env, tmp_path / f"worker-{name}.log"))
    workers[0].wait_ready()
    workers[1].wait_ready()

    _pg_path(evidence, pg_broker, pg_url)
    _cosmos_path(evidence, cosmos_broker, cosmos_config)
    _errors_at_the_call(evidence, secret_redis.port, pg_url)
    _cli(evidence, pg_env, tmp_path)
    wait_until("the broken worker's error", lambda: "no_such_database" in workers[2].log(), 30)
    for worker in workers:
        worker.stop()
        evidence.add(f"log of {worker.log_path.name}", worker.log())
    _broker_contents(evidence, secret_redis, range(3))
    evidence.add("caplog", caplog.text + "\n".join(r.getMessage() for r in caplog.records))

    dlq = DeadLetters(pg_broker)
    assert dlq.count() == 2 and "no_poison" in str(dlq.list())
    dlq.close()
    assert ":***@" in workers[2].log(), "the broken worker names its database, masked"
    assert len(evidence.texts) > 20
    evidence.assert_clean()


def test_the_search_finds_a_secret() -> None:
    evidence = Evidence()
    evidence.add("clean", "postgresql://u:***@host/db")
    evidence.assert_clean()
    evidence.add("leaky", f"postgresql://u:{PG_SECRET}@host/db")
    with pytest.raises(AssertionError, match="leaky"):
        evidence.assert_clean()
