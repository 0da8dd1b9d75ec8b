"""The backend registry: selection from settings, and what each backend says of its store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage import ConfigError, InMemoryStorageClient, backends, load_settings
from storage.base import StorageBackend
from storage.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PG_URL = "postgresql://agent:pg-Secret-1@db.example:6543/agents"
COSMOS = {"cosmos_endpoint": "https://acct.documents.azure.com:443/", "cosmos_key": "a2V5LTEyMzQ="}


def settings(**values: Any) -> Settings:
    # Only what the test gives: nothing from the environment or a .env.
    unset = dict.fromkeys(("postgres_connection_string", "cosmos_endpoint", "cosmos_key"))
    return load_settings(_env_file=None, **{**unset, **values})


def test_an_unknown_backend_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as info:
        settings(agentstore_backend="sqlite")
    assert "AGENTSTORE_BACKEND: must be one of postgres, cosmos, memory, got 'sqlite'" in str(
        info.value
    )


def test_no_backend_configured_says_what_to_set_for_each() -> None:
    with pytest.raises(ConfigError) as info:
        backends.describe(settings())
    for needed in ("POSTGRES_CONNECTION_STRING", "COSMOS_ENDPOINT and COSMOS_KEY", "=memory"):
        assert needed in str(info.value)
    assert backends.chosen(settings()) is None


def test_choice_the_name_first_then_postgres_then_cosmos_memory_only_by_name() -> None:
    both = {"postgres_connection_string": PG_URL, **COSMOS}
    assert backends.chosen(settings(**both)) == backends.BACKENDS["postgres"]
    assert backends.chosen(settings(**COSMOS)) == backends.BACKENDS["cosmos"]
    named = settings(agentstore_backend="cosmos", **both)
    assert backends.chosen(named) == backends.BACKENDS["cosmos"]
    endpoint_only = settings(cosmos_endpoint=COSMOS["cosmos_endpoint"])
    assert backends.chosen(endpoint_only) is None, "a key is needed too"
    memory = settings(agentstore_backend="memory", **both)
    assert backends.backend_class(memory) is InMemoryStorageClient


@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_every_backend_implements_what_the_registry_asks_of_it(name: str) -> None:
    cls = backends.BACKENDS[name].load()
    assert issubclass(cls, StorageBackend)
    for method in ("from_settings", "describe", "identity", "count"):
        assert getattr(cls, method) is not getattr(StorageBackend, method), method


def test_postgres_describes_without_its_password_and_identifies_the_server() -> None:
    url = settings(postgres_connection_string=PG_URL)
    assert backends.describe(url) == "PostgreSQL postgresql://agent:***@db.example:6543/agents"
    assert backends.identity(url) == ("postgres", "db.example", "6543", "agents")
    assert backends.secrets(url) == ["pg-Secret-1"]
    libpq = settings(postgres_connection_string="host=/run/pg dbname=agents password=pw-12345")
    assert backends.describe(libpq) == "PostgreSQL host=localhost port=5432 dbname=agents"
    assert backends.secrets(libpq) == ["pw-12345"]


@pytest.mark.parametrize(
    "other",
    [
        "postgresql://u:x@localhost/agents",
        "postgresql://u@[::1]:5432/agents",
        "host=/var/run/postgresql dbname=agents",
        "postgresql://u@/agents?host=/tmp/socket-dir",
    ],
)
def test_postgres_loopback_by_name_address_or_socket_is_one_server(other: str) -> None:
    first = settings(postgres_connection_string="postgresql://u:p@127.0.0.1:5432/agents")
    assert backends.identity(first) == backends.identity(settings(postgres_connection_string=other))


def test_postgres_string_that_cannot_be_parsed_is_a_config_error() -> None:
    bad = settings(postgres_connection_string="host='unterminated dbname=x")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        backends.identity(bad)
    assert backends.secrets(bad) == []


def test_cosmos_describes_without_its_key_and_identifies_the_account() -> None:
    cosmos = settings(**COSMOS, cosmos_database_name="agents")
    assert backends.describe(cosmos) == (
        "Cosmos DB https://acct.documents.azure.com:443/ database agents"
    )
    assert backends.identity(cosmos) == ("cosmos", "acct.documents.azure.com", "443", "agents")
    assert backends.secrets(cosmos) == [COSMOS["cosmos_key"]]
    local = {"cosmos_key": "a2V5", "cosmos_database_name": "d"}
    by_name = settings(cosmos_endpoint="https://localhost:8081/", **local)
    by_address = settings(cosmos_endpoint="https://127.0.0.1:8081/", **local)
    assert backends.identity(by_name) == backends.identity(by_address)


def test_secrets_of_every_configured_backend_not_only_the_chosen_one() -> None:
    both = settings(postgres_connection_string=PG_URL, **COSMOS)
    assert backends.secrets(both) == ["pg-Secret-1", COSMOS["cosmos_key"]]
    memory = settings(agentstore_backend="memory")
    assert backends.secrets(memory) == []
    assert backends.describe(memory) == "in-memory store (this process only)"
    assert backends.identity(memory) == ("memory",)


def test_a_named_backend_without_its_settings_says_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="POSTGRES_CONNECTION_STRING is not set"):
        backends.describe(settings(agentstore_backend="postgres", **COSMOS))
    with pytest.raises(ConfigError, match="COSMOS_ENDPOINT and COSMOS_KEY"):
        backends.identity(settings(agentstore_backend="cosmos"))


def test_memory_count_is_exact() -> None:
    with InMemoryStorageClient() as store:
        store.save_state("a", "s", {})
        store.save_state("a", "t", {})
        store.delete_state("a", "t")
        store.erase_agent("b")
        assert [store.count(k) for k in ("state", "task", "tombstone")] == [2, 0, 1]


def test_importing_storage_or_choosing_memory_loads_no_driver() -> None:
    code = (
        "import sys, storage\n"
        "from storage import backends, create_storage_client, load_settings\n"
        "s = load_settings(_env_file=None, agentstore_backend='memory')\n"
        "create_storage_client(s).close(); backends.describe(s); backends.secrets(s)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'psycopg2', 'azure'}))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
