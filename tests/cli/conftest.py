"""Fixtures for the `agentstore` command: real PostgreSQL, Cosmos DB test server and Redis.

Every invocation runs with a clean configuration (only the variables a test gives), from a
temporary directory (no stray `.env`, checkpoints kept apart), and its output is searched
for every secret the tests configure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agentstore_cli.launch import EMULATOR_KEY, CosmosServer
from agentstore_cli.main import cli
from storage import StorageBackend, create_storage_client
from storage.ops import Op, make_op
from storage.pg_url import options, with_credentials
from storage.records import KINDS
from storage.versions import normalize_version
from tests.plugin import ROOT
from tests.services import fresh_pg_database

PG_PASSWORD = "pg-S3cret-Pw"  # trust auth accepts any password; it must never be printed
REDIS_PASSWORD = "redis-S3cret-Pw"
CONFIG_VARS = (
    "POSTGRES_CONNECTION_STRING",
    "COSMOS_ENDPOINT",
    "COSMOS_KEY",
    "COSMOS_DATABASE_NAME",
    "CELERY_BROKER_URL",
)


def with_password(url: str) -> str:
    return with_credentials(url, options(url).get("user", "postgres"), PG_PASSWORD)


def secrets() -> list[str]:
    return [PG_PASSWORD, REDIS_PASSWORD, EMULATOR_KEY]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in secrets():
            assert secret not in text, f"a secret was printed:\n{text}"


class Cli:
    """Runs `agentstore` in-process with exactly the configuration given."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def env(self, config: Mapping[str, str | None]) -> dict[str, str | None]:
        env: dict[str, str | None] = dict.fromkeys(CONFIG_VARS)
        env.update(config)
        return env

    def __call__(
        self, args: list[str], config: Mapping[str, str | None], input: str | bytes | None = None
    ) -> Result:
        result = CliRunner().invoke(cli, args, env=self.env(config), input=input)
        assert_no_secret(result.stdout, result.stderr)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def subprocess(self, args: list[str], config: Mapping[str, str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        env.update(config)
        env["PYTHONPATH"] = str(ROOT)
        code = "from agentstore_cli.main import cli; cli()"
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)
    for var in CONFIG_VARS:
        monkeypatch.delenv(var, raising=False)
    return Cli(tmp_path)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database; its URL carries a password that must never be printed."""
    with fresh_pg_database("agentstore_cli") as url:
        yield with_password(url)


@dataclass
class Cosmos:
    endpoint: str
    key: str

    def config(self, database: str | None = None) -> dict[str, str]:
        """Variables for a fresh (or the named) database on the test server."""
        return {
            "COSMOS_ENDPOINT": self.endpoint,
            "COSMOS_KEY": self.key,
            "COSMOS_DATABASE_NAME": database or f"cli_{uuid.uuid4().hex[:10]}",
        }


@pytest.fixture(scope="session")
def cosmos(cosmos_server: CosmosServer) -> Cosmos:
    return Cosmos(cosmos_server.endpoint, cosmos_server.key)


def env_file(path: Path, config: Mapping[str, str]) -> Path:
    """A `.env` file at `path` setting `config`."""
    path.write_text("".join(f"{k}={v}\n" for k, v in config.items()), encoding="utf-8")
    return path


def open_store(config: Mapping[str, str]) -> StorageBackend:
    settings: dict[str, Any] = dict.fromkeys(("postgres_connection_string", "cosmos_endpoint"))
    settings.update({k.lower(): v for k, v in config.items()})
    return create_storage_client(_env_file=None, **settings)


def seed(store: StorageBackend, messages: int = 1_050, tag: str = "") -> None:
    """Every kind, awkward ids included, over several pages of each."""
    ops = []
    for n in range(120):
        agent = f"agent{tag}-{n % 7}/é|%"
        ops.append(
            make_op("save_state", {"agent_id": agent, "state_id": f"s{n}", "state": {"n": n}})
        )
        ops.append(
            make_op("save_task", {"agent_id": agent, "task_id": f"t#{n}", "task_data": {"n": n}})
        )
    for n in range(messages):
        message = {"n": n, "role": "user" if n % 2 else "assistant", "text": f"héllo {n} 🙂"}
        ops.append(
            make_op(
                "save_conversation", {"conversation_id": f"conv{tag}-{n % 4}", "message": message}
            )
        )
    for case in range(30):
        txns = [{"id": f"tx{case}-{i}", "amount": i} for i in range(9)] + [{"amount": -1}]
        ops.append(
            make_op("save_transactions", {"case_id": f"case{tag}-{case}", "transactions": txns})
        )
    # A re-save: newer content, first position kept.
    ops.append(
        make_op(
            "save_transactions",
            {"case_id": f"case{tag}-0", "transactions": [{"id": "tx0-3", "amount": 99}]},
        )
    )
    for start in range(0, len(ops), 500):
        store.apply(ops[start : start + 500])


def snapshot(store: StorageBackend) -> dict[str, set[tuple[Any, ...]]]:
    """Every record of every kind, as comparable tuples."""
    import json

    result: dict[str, set[tuple[Any, ...]]] = {}
    for kind in KINDS:
        rows: set[tuple[Any, ...]] = set()
        after = None
        while page := store.scan_records(kind, after=after, limit=1000):
            rows |= {
                (
                    r.row_id,
                    r.partition,
                    r.sub_id,
                    json.dumps(r.data, sort_keys=True),
                    r.version,
                    r.position,
                )
                for r in page
            }
            after = page[-1].row_id
        result[kind] = rows
    return result


def same_reads(a: StorageBackend, b: StorageBackend, tag: str = "") -> None:
    for n in range(120):
        agent = f"agent{tag}-{n % 7}/é|%"
        assert a.get_state(agent, f"s{n}") == b.get_state(agent, f"s{n}") == {"n": n}
        assert a.get_task(agent, f"t#{n}") == b.get_task(agent, f"t#{n}") == {"n": n}
    for c in range(4):
        history = a.get_conversation_history(f"conv{tag}-{c}")
        assert history and history == b.get_conversation_history(f"conv{tag}-{c}")
        assert a.get_conversation_history(f"conv{tag}-{c}", 5) == b.get_conversation_history(
            f"conv{tag}-{c}", 5
        )
    for case in range(30):
        assert a.get_transactions(f"case{tag}-{case}") == b.get_transactions(f"case{tag}-{case}")
    assert b.get_transactions(f"case{tag}-0")[3] == {"id": "tx0-3", "amount": 99}


# The scenario: saves with an old version, then the deletes of whole partitions.
OLD_VERSION, DELETE_VERSION = normalize_version(1), normalize_version(2)


def old_saves() -> list[Op]:
    """Saves older than the deletes of `delete_partitions`; re-sent late, they must not land."""
    old = {"m": "old"}
    return [
        make_op(
            "save_state", {"agent_id": "ag", "state_id": "s", "state": old}, version=OLD_VERSION
        ),
        make_op(
            "save_task", {"agent_id": "ag", "task_id": "t", "task_data": old}, version=OLD_VERSION
        ),
        make_op(
            "save_conversation", {"conversation_id": "cv", "message": old}, version=OLD_VERSION
        ),
        make_op(
            "save_transactions",
            {"case_id": "cs", "transactions": [{**old, "id": "t1"}]},
            version=OLD_VERSION,
        ),
    ]


def delete_partitions(store: StorageBackend) -> None:
    """Old saves, then erase_agent, delete_conversation and delete_transactions(case_id)."""
    store.apply(old_saves())
    store.erase_agent("ag", version=DELETE_VERSION)
    store.delete_conversation("cv", version=DELETE_VERSION)
    store.delete_transactions("cs", version=DELETE_VERSION)


def assert_deletes_hold(store: StorageBackend) -> None:
    """The old saves, re-sent, leave the deleted partitions empty."""
    store.apply(old_saves())
    found = (
        store.get_state("ag", "s"),
        store.get_task("ag", "t"),
        store.get_conversation_history("cv"),
        store.get_transactions("cs"),
    )
    assert found == (None, None, [], [])
    assert [(t.scope, t.key, t.version) for t in store.scan_tombstones()] == [
        ("agent", "ag", DELETE_VERSION),
        ("case", "cs", DELETE_VERSION),
        ("conversation", "cv", DELETE_VERSION),
    ]
