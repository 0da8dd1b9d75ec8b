"""Configuration and the factory: which backend, clear errors, secrets never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from producer import Producer
from storage import ConfigError, create_storage_client, load_settings
from storage.config import mask_url

ALL_VARS = (
    "POSTGRES_CONNECTION_STRING",
    "COSMOS_ENDPOINT",
    "COSMOS_KEY",
    "COSMOS_DATABASE_NAME",
    "CELERY_BROKER_URL",
    "AGENTSTORE_BACKEND",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_nothing_configured_names_the_variables() -> None:
    with pytest.raises(ConfigError) as info:
        create_storage_client()
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for name in ("POSTGRES_CONNECTION_STRING", "COSMOS_ENDPOINT", "COSMOS_KEY"):
        assert name in message


def test_memory_backend_is_chosen_by_name_over_a_configured_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from storage import InMemoryStorageClient

    monkeypatch.setenv("POSTGRES_CONNECTION_STRING", "postgresql://u:p@127.0.0.1:1/db")
    monkeypatch.setenv("AGENTSTORE_BACKEND", "memory")
    with create_storage_client() as first, create_storage_client() as second:
        assert isinstance(first, InMemoryStorageClient)
        first.save_state("a", "s", {"x": 1})
        assert second.get_state("a", "s") is None, "each client is a store of its own"


def test_named_backend_without_its_settings_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COSMOS_ENDPOINT", "https://acct.documents.azure.com:443/")
    monkeypatch.setenv("COSMOS_KEY", "a2V5")
    monkeypatch.setenv("AGENTSTORE_BACKEND", "postgres")
    with pytest.raises(ConfigError, match="POSTGRES_CONNECTION_STRING is not set"):
        create_storage_client()
    monkeypatch.setenv("AGENTSTORE_BACKEND", "sqlite")
    with pytest.raises(
        ConfigError,
        match="AGENTSTORE_BACKEND: must be one of postgres, cosmos, memory, got 'sqlite'",
    ):
        create_storage_client()


def test_cosmos_endpoint_without_key_is_not_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMOS_ENDPOINT", "https://acct.documents.azure.com:443/")
    with pytest.raises(ConfigError, match="COSMOS_KEY"):
        create_storage_client()


def test_defaults() -> None:
    settings = load_settings()
    assert settings.cosmos_database_name == "transaction_review"
    assert settings.celery_broker_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.postgres_connection_string is None


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "COSMOS_ENDPOINT=https://acct.documents.azure.com:443/\nCOSMOS_DATABASE_NAME=other\n"
    )
    settings = load_settings()
    assert settings.cosmos_endpoint == "https://acct.documents.azure.com:443/"
    assert settings.cosmos_database_name == "other"


def test_postgres_wins_when_both_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.services import PG_ADMIN_URL

    monkeypatch.setenv("POSTGRES_CONNECTION_STRING", PG_ADMIN_URL)
    monkeypatch.setenv("COSMOS_ENDPOINT", "https://127.0.0.1:1/")
    monkeypatch.setenv("COSMOS_KEY", "a2V5")
    try:
        client = create_storage_client()
    except Exception as exc:  # the local server is missing
        from tests.services import unavailable

        unavailable(f"PostgreSQL: {exc}")
    with client:
        assert type(client).__name__ == "PostgreSQLClient"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POSTGRES_CONNECTION_STRING", "mysql://u:p@h/db"),
        ("POSTGRES_CONNECTION_STRING", "postgresql://u:hunter2@host:notaport/db"),
        ("POSTGRES_CONNECTION_STRING", "just some words"),
        ("COSMOS_ENDPOINT", "acct.documents.azure.com"),
        ("COSMOS_ENDPOINT", "ftp://acct/"),
        ("CELERY_BROKER_URL", "amqp://guest:guest@localhost//"),
    ],
)
def test_malformed_values_fail_at_creation(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        create_storage_client()
    assert name in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "redis://:hunter2@127.0.0.1:6379/abc",
        "redis://:hunter2@127.0.0.1:6379/3/extra",
        "redis://:hunter2@127.0.0.1:6379/-1",
        "redis://:hunter2@127.0.0.1:6379/0?db=x",
        "redis://:hunter2@:6379/0",
        "rediss://:hunter2@/0",
        "unix://:hunter2@",
        "http://:hunter2@127.0.0.1:6379/0",
        "127.0.0.1:6379",
    ],
)
def test_malformed_broker_urls_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "CELERY_BROKER_URL" in str(info.value)
    assert "hunter2" not in str(info.value)
    monkeypatch.delenv("CELERY_BROKER_URL")
    with pytest.raises(ConfigError) as info:
        Producer(broker_url=value)
    assert "broker_url" in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://:pw@broker/15",
        "rediss://user:pw@broker:6380/2?ssl_cert_reqs=required",
        "redis://broker:6379?db=3",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_well_formed_broker_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", value)
    assert load_settings().celery_broker_url.get_secret_value() == value


def test_secrets_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load_settings(
        postgres_connection_string="postgresql://agent:pg-SECRET@db:5432/agents",
        cosmos_key="Y29zbW9zLVNFQ1JFVA==",
        celery_broker_url="redis://:redis-SECRET@broker:6379/0",
    )
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    for secret in ("pg-SECRET", "Y29zbW9zLVNFQ1JFVA==", "redis-SECRET"):
        assert secret not in shown
    assert mask_url("postgresql://agent:pg-SECRET@db:5432/agents") == (
        "postgresql://agent:***@db:5432/agents"
    )
    assert mask_url("redis://:redis-SECRET@broker:6379/0") == "redis://:***@broker:6379/0"
    assert mask_url("redis://broker:6379/0") == "redis://broker:6379/0"
