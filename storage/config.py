"""Settings from the environment and `.env`, validated at creation, with secrets masked."""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .backends import BACKENDS
from .errors import ConfigError


def mask_url(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`; else unchanged.

    A Sentinel broker URL (`sentinel://...;sentinel://...`) is masked part by part."""
    if ";" in url and url.startswith(SENTINEL_SCHEME):
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL (expected {schemes[0]}://host...)") from None
    if parts.scheme not in schemes or not (parts.hostname or parts.query or parts.path):
        raise ConfigError(f"{name} must look like {schemes[0]}://host..., got {mask_url(value)!r}")


_DB_PATH = re.compile(r"^/?[0-9]*$")
# kombu's form for Redis Sentinel: `sentinel://[:password@]host:port[/db];sentinel://host:port`.
SENTINEL_SCHEME = "sentinel://"


def check_broker_url(name: str, value: str) -> None:
    """Raise `ConfigError` naming `name` unless `value` is a Redis URL redis-py reads as meant.

    redis-py silently ignores a database path it cannot parse (`/abc`, `/3/extra`) and
    uses database 0, while the worker refuses it: producer and worker would disagree.
    """
    if value.startswith(SENTINEL_SCHEME):
        for part in value.split(";"):
            _check_one_broker_url(name, part, ("sentinel",), mask_url(value))
        return
    _check_one_broker_url(name, value, ("redis", "rediss", "unix"), mask_url(value))


def _check_one_broker_url(name: str, value: str, schemes: tuple[str, ...], shown: str) -> None:
    _check_url(name, value, schemes)
    parts = urlsplit(value)
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{name} must look like unix:///path/to/redis.sock, got {shown!r}")
    elif not parts.hostname:
        raise ConfigError(f"{name} must name a host, like redis://host:6379/0, got {shown!r}")
    elif not _DB_PATH.match(parts.path):
        raise ConfigError(
            f"{name} must end in a database number (redis://host:6379/0), got {shown!r}"
        )
    for db in parse_qs(parts.query).get("db", []):
        if not db.isdigit():
            raise ConfigError(f"{name} has a db= that is not a number, got {shown!r}")


S = TypeVar("S", bound=BaseSettings)


class Settings(BaseSettings):
    """Every setting agentstore reads; names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    # A name in `storage.backends.BACKENDS`; None: chosen from the settings below.
    agentstore_backend: str | None = None

    postgres_connection_string: SecretStr | None = None
    postgres_pool_min: int = 1
    postgres_pool_max: int = 10
    postgres_connect_timeout_s: int = 10

    cosmos_endpoint: str | None = None
    cosmos_key: SecretStr | None = None
    cosmos_database_name: str = "transaction_review"
    cosmos_max_concurrency: int = 8
    agentstore_cosmos_http_log: bool = False  # the SDK's per-request INFO logs

    celery_broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # With a `sentinel://` broker URL: the primary's name in Sentinel, the Sentinels' own
    # password (the URL's password is the Redis servers'), and TLS to Sentinels and servers.
    agentstore_sentinel_master: str = "mymaster"
    agentstore_sentinel_password: SecretStr | None = None
    agentstore_sentinel_tls: bool = False
    # A durable save returns once its message is on this many replicas (Redis WAIT); 0: on
    # the primary only. See docs/GUARANTEES.md.
    agentstore_publish_replicas: int = Field(0, ge=0)

    # Retention (off by default): see storage.retention.RetentionPolicy.
    agentstore_retain_messages: int | None = None
    agentstore_retain_messages_days: float | None = None
    agentstore_retain_finished_tasks_days: float | None = None
    agentstore_finished_task_statuses: str = "done,completed,finished,failed,cancelled"
    agentstore_retain_transactions_days: float | None = None
    agentstore_retain_checkpoints: int | None = None
    agentstore_tombstone_grace_days: float = 7.0

    @field_validator("agentstore_backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        if value is not None and value not in BACKENDS:
            raise ConfigError(f"must be one of {', '.join(BACKENDS)}, got {value!r}")
        return value

    @field_validator("postgres_connection_string")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value()
            if "://" in raw:
                _check_url("POSTGRES_CONNECTION_STRING", raw, ("postgresql", "postgres"))
            elif "=" not in raw:
                raise ConfigError(
                    "POSTGRES_CONNECTION_STRING must be a URL like "
                    "postgresql://user:password@host:5432/dbname or a libpq 'key=value' string"
                )
        return value

    @field_validator("cosmos_endpoint")
    @classmethod
    def _cosmos_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url("COSMOS_ENDPOINT", value, ("https", "http"))
        return value

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_url(cls, value: SecretStr) -> SecretStr:
        check_broker_url("CELERY_BROKER_URL", value.get_secret_value())
        return value

    @field_validator(
        "postgres_pool_min",
        "postgres_pool_max",
        "cosmos_max_concurrency",
        "agentstore_retain_messages",
        "agentstore_retain_messages_days",
        "agentstore_retain_finished_tasks_days",
        "agentstore_retain_transactions_days",
        "agentstore_retain_checkpoints",
        "agentstore_tombstone_grace_days",
    )
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ConfigError("must be a positive number")
        return value


def read_settings(cls: type[S], **overrides: Any) -> S:
    """`cls(**overrides)` (plus the environment and `.env`); a malformed value raises
    `ConfigError` naming its variable, never its value (it may be a secret)."""
    import pydantic

    try:
        return cls(**overrides)
    except pydantic.ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix") or "")
        reasons = "; ".join(
            f"{prefix.upper()}{'.'.join(map(str, e['loc'])).upper()}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid configuration: {reasons}") from None


def load_settings(**overrides: Any) -> Settings:
    """Read settings; a malformed value raises `ConfigError` naming the variable, not its secret."""
    return read_settings(Settings, **overrides)
