"""PostgreSQL backend: JSONB rows, version-conditional multi-row upserts, a pool that heals."""

from __future__ import annotations

import contextlib
import json
import logging
import select
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool
import pydantic_core

from .base import StorageBackend, check_limit
from .config import Settings, load_settings, mask_url
from .errors import ConfigError, StorageError, TransientStorageError
from .ids import check_id
from .ops import Kind, Record
from .postgres_schema import migrate

log = logging.getLogger(__name__)
T = TypeVar("T")

# Statements per kind: each upsert writes only when the incoming version is newer, so
# redelivered and reordered ops converge on the newest version. A page of rows travels as one
# JSON array parameter, expanded by jsonb_to_recordset: PostgreSQL then parses one short
# statement instead of a VALUES list of thousands of parameters (~1.5x the rows per second
# of execute_values), and rows are taken in row id order, so concurrent batches lock rows in
# one order and never deadlock.
_UPSERTS: dict[Kind, str] = {
    "state": (
        "INSERT INTO agent_states AS t (id, agent_id, state_id, state, version) "
        "SELECT id, part, sub_id, data, version FROM jsonb_to_recordset(%s::jsonb) "
        "AS r(id text, part text, sub_id text, data jsonb, version text) "
        'ORDER BY id COLLATE "C" '
        "ON CONFLICT (agent_id, state_id) DO UPDATE SET state = EXCLUDED.state, "
        "version = EXCLUDED.version, timestamp = CURRENT_TIMESTAMP "
        "WHERE t.version < EXCLUDED.version"
    ),
    "task": (
        "INSERT INTO agent_tasks AS t (id, agent_id, task_id, task_data, version) "
        "SELECT id, part, sub_id, data, version FROM jsonb_to_recordset(%s::jsonb) "
        "AS r(id text, part text, sub_id text, data jsonb, version text) "
        'ORDER BY id COLLATE "C" '
        "ON CONFLICT (agent_id, task_id) DO UPDATE SET task_data = EXCLUDED.task_data, "
        "version = EXCLUDED.version, timestamp = CURRENT_TIMESTAMP "
        "WHERE t.version < EXCLUDED.version"
    ),
    # Messages are immutable: the first copy of a message id stays.
    "conversation": (
        "INSERT INTO conversations (id, conversation_id, message, version, position) "
        "SELECT id, part, data, version, position FROM jsonb_to_recordset(%s::jsonb) "
        "AS r(id text, part text, data jsonb, version text, position text) "
        'ORDER BY id COLLATE "C" '
        "ON CONFLICT (id) DO NOTHING"
    ),
    # A re-saved transaction takes the newer content but keeps its first position.
    "transaction": (
        "INSERT INTO transactions AS t (id, case_id, transaction, version, position) "
        "SELECT id, part, data, version, position FROM jsonb_to_recordset(%s::jsonb) "
        "AS r(id text, part text, data jsonb, version text, position text) "
        'ORDER BY id COLLATE "C" '
        "ON CONFLICT (id) DO UPDATE SET "
        "transaction = CASE WHEN t.version < EXCLUDED.version "
        "THEN EXCLUDED.transaction ELSE t.transaction END, "
        "version = GREATEST(t.version, EXCLUDED.version), "
        "position = LEAST(t.position, EXCLUDED.position), timestamp = CURRENT_TIMESTAMP "
        "WHERE t.version < EXCLUDED.version OR t.position > EXCLUDED.position"
    ),
}
# Rows per statement, and characters: a page stays far below PostgreSQL's 1 GB value limit.
_PAGE_ROWS = 1000
_PAGE_CHARS = 16_000_000
_quote = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept as is


def _json_row(rec: Record) -> str:
    """One row of a page: every column jsonb_to_recordset reads, for any kind."""
    # Payloads were validated as plain JSON; pydantic-core writes them ~5x faster than json.
    data = pydantic_core.to_json(rec.data).decode()
    return (
        f'{{"id":{_quote(rec.row_id)},"part":{_quote(rec.partition)},'
        f'"sub_id":{_quote(rec.sub_id)},"data":{data},"version":{_quote(rec.version)},'
        f'"position":{_quote(rec.position)}}}'
    )


def _pages(recs: list[Record]) -> Iterator[str]:
    """JSON arrays of at most `_PAGE_ROWS` rows and about `_PAGE_CHARS` characters."""
    page: list[str] = []
    size = 0
    for rec in recs:
        row = _json_row(rec)
        if page and (len(page) >= _PAGE_ROWS or size + len(row) > _PAGE_CHARS):
            yield "[" + ",".join(page) + "]"
            page, size = [], 0
        page.append(row)
        size += len(row) + 1
    if page:
        yield "[" + ",".join(page) + "]"


# Columns read back as Records: row id, partition, sub id, payload, version, position.
_SCANS: dict[Kind, str] = {
    "state": "id, agent_id, state_id, state, version, version FROM agent_states",
    "task": "id, agent_id, task_id, task_data, version, version FROM agent_tasks",
    "conversation": "id, conversation_id, id, message, version, position FROM conversations",
    "transaction": "id, case_id, transaction->>'id', transaction, version, position "
    "FROM transactions",
}

_TRANSIENT = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    psycopg2.errors.SerializationFailure,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.LockNotAvailable,
    psycopg2.errors.QueryCanceled,
)


def _is_broken(conn: Any) -> bool:
    # An idle connection has nothing to read; anything readable is the server's goodbye
    # (pg_terminate_backend, restart) or EOF. Costs one select(), no round trip.
    if conn.closed:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class PostgreSQLClient(StorageBackend):
    """`StorageClient` on PostgreSQL (psycopg2 `ThreadedConnectionPool`, JSONB rows).

    Creating it applies pending schema migrations. Thread-safe: threads share the pool, and
    a thread waits up to the connect timeout for a free connection.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self._settings = settings or load_settings(**overrides)
        secret = self._settings.postgres_connection_string
        if secret is None:
            raise ConfigError("POSTGRES_CONNECTION_STRING is not set")
        dsn = secret.get_secret_value()
        self._where = mask_url(dsn) if "://" in dsn else "<libpq connection string>"
        size = self._settings.postgres_pool_max
        self._slots = threading.BoundedSemaphore(size)
        try:
            self._pool = psycopg2.pool.ThreadedConnectionPool(
                min(self._settings.postgres_pool_min, size),
                size,
                dsn,
                connect_timeout=self._settings.postgres_connect_timeout_s,
                application_name="agentstore",
            )
        except psycopg2.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL at {self._where}: {exc}") from None
        applied = self._run(migrate)
        if applied:
            log.info("applied migrations %s on %s", applied, self._where)

    def __repr__(self) -> str:
        return f"PostgreSQLClient({self._where})"

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self._settings.postgres_connect_timeout_s):
            raise TransientStorageError(
                f"no free PostgreSQL connection within {self._settings.postgres_connect_timeout_s}"
                f" s (pool max {self._settings.postgres_pool_max})"
            )
        conn = None
        broken = False
        try:
            conn = self._pool.getconn()
            while _is_broken(conn):
                self._pool.putconn(conn, close=True)
                conn = self._pool.getconn()
            conn.autocommit = True
            yield conn
        except _TRANSIENT:
            broken = True
            raise
        finally:
            if conn is not None:
                self._pool.putconn(conn, close=broken or bool(conn.closed))
            self._slots.release()

    def _run(self, action: Callable[[Any], T]) -> T:
        # One retry on a fresh connection covers a connection killed between check and use;
        # writes are idempotent, so repeating a failed transaction is safe.
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return action(conn)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if attempt == 2:
                    raise TransientStorageError(f"PostgreSQL connection failed: {exc}") from None
            except _TRANSIENT as exc:
                raise TransientStorageError(f"PostgreSQL: {exc}".strip()) from None
            except psycopg2.Error as exc:
                raise StorageError(f"PostgreSQL rejected the operation: {exc}".strip()) from None
        raise AssertionError("unreachable")

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def action(conn: Any) -> list[tuple[Any, ...]]:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows: list[tuple[Any, ...]] = cur.fetchall()
                return rows

        return self._run(action)

    def write_records(self, grouped: dict[Kind, list[Record]]) -> None:
        """Write all of `grouped` in one transaction."""
        if not any(grouped.values()):
            return

        def action(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                try:
                    for kind, sql in _UPSERTS.items():
                        # Sorted keys make concurrent batches lock rows in one order (pages too).
                        rows = sorted(grouped[kind], key=lambda r: r.row_id)
                        for page in _pages(rows):
                            cur.execute(sql, (page,))
                    cur.execute("COMMIT")
                except BaseException:
                    if not conn.closed:
                        with contextlib.suppress(psycopg2.Error):
                            cur.execute("ROLLBACK")
                    raise

        self._run(action)

    def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = self._fetch(sql, params)
        return rows[0][0] if rows else None

    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        check_id("agent_id", agent_id)
        check_id("state_id", state_id)
        return self._one(
            "SELECT state FROM agent_states WHERE agent_id = %s AND state_id = %s",
            (agent_id, state_id),
        )

    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        check_id("agent_id", agent_id)
        check_id("task_id", task_id)
        return self._one(
            "SELECT task_data FROM agent_tasks WHERE agent_id = %s AND task_id = %s",
            (agent_id, task_id),
        )

    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        check_id("conversation_id", conversation_id)
        if check_limit(limit) is None:
            rows = self._fetch(
                "SELECT message FROM conversations WHERE conversation_id = %s ORDER BY position",
                (conversation_id,),
            )
        else:
            rows = self._fetch(
                "SELECT message FROM (SELECT message, position FROM conversations "
                "WHERE conversation_id = %s ORDER BY position DESC LIMIT %s) newest "
                "ORDER BY position",
                (conversation_id, limit),
            )
        return [row[0] for row in rows]

    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        check_id("case_id", case_id)
        rows = self._fetch(
            "SELECT transaction FROM transactions WHERE case_id = %s ORDER BY position",
            (case_id,),
        )
        return [row[0] for row in rows]

    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        rows = self._fetch(
            f"SELECT {_SCANS[kind]} WHERE id > %s ORDER BY id LIMIT %s", (after or "", limit)
        )
        return [
            Record(kind, rid, part, data, ver, pos, sub) for rid, part, sub, data, ver, pos in rows
        ]

    def close(self) -> None:
        if not self._pool.closed:
            self._pool.closeall()
