"""PostgreSQL backend: JSONB rows, version-conditional multi-row upserts, a pool that heals."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import zlib
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, Self, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values

from . import postgres_reads as reads
from .base import StorageBackend, check_limit, prefix_bounds
from .checkpoint_reads import Loaded, Wanted
from .config import Settings, load_settings, mask_url
from .errors import (
    ConfigError,
    SchemaNotReadyError,
    StorageError,
    StoreUnavailableError,
    TransientStorageError,
)
from .forks import PerProcess
from .pg_pool import ConnectionPool, PoolClosed, PoolTimeout
from .pg_url import options, server
from .postgres_schema import MIGRATIONS, migrate, schema_version
from .postgres_sql import (
    COPY_INCOMING,
    COUNTS,
    CREATE_INCOMING,
    SCANS,
    TOMBSTONE_DELETES,
    TOMBSTONE_UPSERT,
    UPSERTS,
    copy_rows,
    prune_count,
    prune_delete,
    prune_statements,
    stored_versions_sql,
)
from .records import (
    KIND_SPECS,
    SCOPE_OF,
    Kind,
    Record,
    StreamKind,
    Tombstone,
    Written,
    key_of,
    tombstone_cursor,
)
from .retention import RetentionPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_PRUNE_BATCHES = 1_000
# Partition locks (see _lock_partitions): a fixed number of buckets keeps the locks a
# transaction holds well under max_locks_per_transaction, whatever the batch.
_LOCK_SPACE = 74_612
_LOCK_BUCKETS = 64
_LOCK_SQL = (
    f"BEGIN; {CREATE_INCOMING}; "
    "SELECT CASE WHEN x THEN pg_advisory_xact_lock(%s, b) "
    "ELSE pg_advisory_xact_lock_shared(%s, b) END FROM unnest(%s::int[], %s::bool[]) AS u(b, x)"
)

# Bytes per write of COPY data: psycopg2 reads its file in pieces of this size.
_COPY_CHUNK = 1 << 20

_TRANSIENT = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    psycopg2.errors.SerializationFailure,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.LockNotAvailable,
    psycopg2.errors.QueryCanceled,
)


class PostgreSQLClient(StorageBackend):
    """`StorageClient` on PostgreSQL (psycopg2, JSONB rows).

    Creating it applies pending schema migrations; with `create_schema=False` it writes
    nothing and raises `SchemaNotReadyError` if any is pending (what a read-only check wants).
    Thread-safe: threads share the pool, and a thread waits up to the connect timeout for a
    free connection.
    """

    def __init__(
        self, settings: Settings | None = None, *, create_schema: bool = True, **overrides: Any
    ) -> None:
        self._settings = settings or load_settings(**overrides)
        dsn = _connection_string(self._settings)
        self._where = mask_url(dsn) if "://" in dsn else "<libpq connection string>"
        # A forked child opens its own connections, on first use (no I/O in the fork hook).
        self._conns = PerProcess(
            functools.partial(self._open, 0), self._open(self._settings.postgres_pool_min)
        )
        if not create_schema:
            self._check_schema()
            return
        applied = self._run(migrate)
        if applied:
            log.info("applied migrations %s on %s", applied, self._where)

    def _check_schema(self) -> None:
        current, latest = self._run(schema_version), len(MIGRATIONS)
        if current < latest:
            self.close()
            raise SchemaNotReadyError(
                f"schema not migrated yet ({current} of {latest} migrations applied); the first "
                "worker or client to open the store applies them"
            )

    def __repr__(self) -> str:
        return f"PostgreSQLClient({self._where})"

    def _open(self, minconn: int) -> ConnectionPool:
        size = self._settings.postgres_pool_max
        connect = functools.partial(
            _connect,
            _connection_string(self._settings),
            connect_timeout=self._settings.postgres_connect_timeout_s,
            application_name="agentstore",
        )
        try:
            return ConnectionPool(
                connect, min(minconn, size), size, self._settings.postgres_connect_timeout_s
            )
        except psycopg2.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {self._where}: {exc}".strip()
            ) from None
        except psycopg2.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL at {self._where}: {exc}") from None

    @classmethod
    def from_settings(cls, settings: Settings, *, create_schema: bool = True) -> Self:
        return cls(settings, create_schema=create_schema)

    @classmethod
    def describe(cls, settings: Settings) -> str:
        dsn = _connection_string(settings)
        if "://" in dsn:
            return f"PostgreSQL {mask_url(dsn)}"
        _, host, port, db = cls.identity(settings)
        return f"PostgreSQL host={host} port={port} dbname={db}"

    @classmethod
    def identity(cls, settings: Settings) -> tuple[str, ...]:
        try:
            return ("postgres", *server(_connection_string(settings)))
        except psycopg2.ProgrammingError:
            raise ConfigError("POSTGRES_CONNECTION_STRING cannot be parsed") from None

    @classmethod
    def secrets(cls, settings: Settings) -> list[str]:
        try:
            password = options(_connection_string(settings)).get("password")
        except (ConfigError, psycopg2.ProgrammingError):
            return []
        return [password] if password else []

    def count(self, kind: StreamKind) -> int:
        """The exact number of rows of `kind` (deleted rows included), or of tombstones."""
        return int(self._fetch(COUNTS[kind], ())[0][0])

    def _run(self, action: Callable[[Any], T]) -> T:
        """`action(conn)` on a pooled autocommit connection, with the errors translated.

        A connection the server closed (pg_terminate_backend, a restart kills every pooled
        connection at once, an idle timeout) fails at its first statement and is replaced, up
        to once per pooled connection. Writes are idempotent, so repeating one is safe. Written
        out in one function: a read is a few tens of microseconds of client CPU, and each
        layer of calls was a measurable part of it.
        """
        pool = self._conns.get()
        attempts = self._settings.postgres_pool_max + 1
        for attempt in range(1, attempts + 1):
            conn = _checkout(pool, self._where)
            broken = False
            try:
                return action(conn)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                broken = True
                if attempt == attempts:
                    raise TransientStorageError(f"PostgreSQL connection failed: {exc}") from None
            except psycopg2.errors.UniqueViolation as exc:
                # Two transactions inserting the same new key: ON CONFLICT arbitrates on
                # (agent_id, state_id) but the primary key on `id` is checked first and only
                # waits, then fails. Once the other has committed, the same upsert takes the
                # conflict path; ids are injective, so no other unique violation can occur.
                if attempt == attempts:
                    raise TransientStorageError(f"PostgreSQL: {exc}".strip()) from None
            except _TRANSIENT as exc:
                broken = True
                raise TransientStorageError(f"PostgreSQL: {exc}".strip()) from None
            except psycopg2.Error as exc:
                raise StorageError(f"PostgreSQL rejected the operation: {exc}".strip()) from None
            finally:
                pool.putconn(conn, close=broken or bool(conn.closed))
        raise AssertionError("unreachable")

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def action(conn: Any) -> list[tuple[Any, ...]]:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows: list[tuple[Any, ...]] = cur.fetchall()
                return rows

        return self._run(action)

    def write_records(
        self, grouped: dict[Kind, list[Record]], tombstones: Sequence[Tombstone] = ()
    ) -> Written:
        """Write `tombstones`, then `grouped`, in one transaction."""
        if not tombstones and not any(grouped.values()):
            return {}

        def action(conn: Any) -> Written:
            with conn.cursor() as cur:
                # BEGIN, the incoming table and the partition locks: one round trip.
                try:
                    _lock_partitions(cur, grouped, tombstones)
                    written = _write_tombstones(cur, tombstones) if tombstones else {}
                    kinds, texts = [], []
                    for kind in UPSERTS:
                        # Sorted keys make concurrent batches lock rows in one order.
                        rows = sorted(grouped.get(kind, ()), key=lambda r: r.row_id)
                        if rows:
                            kinds.append(kind)
                            texts.append(copy_rows(kind, rows))
                    if texts:
                        text = io.BytesIO("".join(texts).encode())
                        cur.copy_expert(COPY_INCOMING, text, size=_COPY_CHUNK)
                    for kind in kinds:
                        cur.execute(UPSERTS[kind])
                        stored = cur.fetchall()  # (row id, version): thousands, iterated in C
                        keys = zip(repeat(kind), map(itemgetter(0), stored))
                        written.update(zip(keys, map(itemgetter(1), stored), strict=True))
                    cur.execute("COMMIT")
                    return written
                except BaseException:
                    if not conn.closed:
                        with contextlib.suppress(psycopg2.Error):
                            cur.execute("ROLLBACK")
                    raise

        return self._run(action)

    def _query(self, query: reads.Query[T]) -> T:
        return query.shape(self._fetch(query.sql, query.params))

    def load_checkpoints(self, wanted: Wanted) -> list[Loaded]:
        return self._query(reads.load_checkpoints(wanted))

    def stored_versions(self, items: Sequence[Record | Tombstone]) -> Written:
        ids: dict[Kind, list[str]] = {}
        buried: list[Tombstone] = []
        for item in items:
            if isinstance(item, Tombstone):
                buried.append(item)
            else:
                ids.setdefault(item.kind, []).append(item.row_id)
        if not items:
            return {}
        params: list[Any] = list(ids.values())
        if buried:
            params += [[t.scope for t in buried], [t.key for t in buried]]
        rows = self._fetch(stored_versions_sql(list(ids), bool(buried)), tuple(params))
        return {(kind, rid): version for kind, rid, version in rows}

    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        return self._query(reads.get_state(agent_id, state_id))

    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        return self._query(reads.get_task(agent_id, task_id))

    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return self._query(reads.get_conversation_history(conversation_id, limit))

    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        return self._query(reads.get_transactions(case_id))

    def list_states(self, agent_id: str) -> list[str]:
        return self._query(reads.list_states(agent_id))

    def list_tasks(self, agent_id: str) -> list[str]:
        return self._query(reads.list_tasks(agent_id))

    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        rows = self._fetch(
            f"SELECT {SCANS[kind]} WHERE id > %s ORDER BY id LIMIT %s", (after or "", limit)
        )
        return _records(kind, rows)

    def read_rows(
        self,
        kind: Kind,
        partition: str,
        prefix: str,
        *,
        below: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[Record]:
        low, high = prefix_bounds(prefix, below)
        part = KIND_SPECS[kind].partition
        order = "DESC" if descending else "ASC"
        rows = self._fetch(
            f"SELECT {SCANS[kind]} WHERE {part} = %s AND id >= %s AND id < %s AND NOT deleted "
            f"ORDER BY id {order} LIMIT %s",
            (partition, low, high, check_limit(limit)),
        )
        return _records(kind, rows)

    def get_rows(self, kind: Kind, partition: str, row_ids: Sequence[str]) -> list[Record]:
        if not row_ids:
            return []
        part = KIND_SPECS[kind].partition
        rows = self._fetch(
            f"SELECT {SCANS[kind]} WHERE {part} = %s AND id = ANY(%s) AND NOT deleted",
            (partition, list(row_ids)),
        )
        return _records(kind, rows)

    def scan_tombstones(self, after: str | None = None, limit: int = 500) -> list[Tombstone]:
        rows = self._fetch(
            "SELECT scope, key, version FROM agentstore_tombstones "
            "WHERE (scope, key) > (%s, %s) ORDER BY scope, key LIMIT %s",
            (*tombstone_cursor(after), check_limit(limit)),
        )
        return [Tombstone(scope, key, version) for scope, key, version in rows]

    def _prune_records(self, policy: RetentionPolicy, dry_run: bool) -> dict[str, int]:
        counts: dict[str, int] = {}
        for category, (query, params) in prune_statements(policy).items():
            if dry_run:
                counts[category] = self._fetch(prune_count(query), params)[0][0]
                continue
            # Short transactions of at most batch_size rows: no long locks, and several
            # workers pruning at once only split the work.
            delete = prune_delete(category, query)
            removed = 0
            for _ in range(_MAX_PRUNE_BATCHES):
                done = self._execute(delete, (*params, policy.batch_size))
                removed += done
                if done < policy.batch_size:
                    break
            counts[category] = removed
        return counts

    def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        def action(conn: Any) -> int:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                count: int = cur.rowcount
                return count

        return self._run(action)

    def close(self) -> None:
        # Only this process's own connections: a child's close() must not end its parent's.
        pool = self._conns.made()
        if pool is not None and not pool.closed:
            pool.closeall()


# Run once on each new connection. The checkpoint load's estimates grow with the tables (its
# range joins), and past jit_above_cost PostgreSQL compiles every run of it: 24 ms for a
# read that takes 0.7 ms without, at 105,000 checkpoints (docs/PERFORMANCE.md). Short
# lookups and batched upserts never gain from JIT. A SET, not a startup option: PgBouncer
# refuses startup options it does not track.
SESSION_SETUP = "SET jit = off"


def _connect(dsn: str, **options: Any) -> Any:
    conn = psycopg2.connect(dsn, **options)
    # Every statement runs in autocommit; writes open their transaction with BEGIN.
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(SESSION_SETUP)
    except BaseException:
        conn.close()
        raise
    return conn


def _checkout(pool: ConnectionPool, where: str) -> Any:
    # A failure to connect is not retried by _run (each try could take the whole connect
    # timeout): it is reported at once, as transient.
    try:
        conn = pool.getconn()
    except PoolTimeout as exc:
        raise TransientStorageError(str(exc)) from None
    except PoolClosed as exc:
        raise StorageError(str(exc)) from None
    except psycopg2.OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {where}: {exc}".strip()
        ) from None
    return conn


def _connection_string(settings: Settings) -> str:
    if settings.postgres_connection_string is None:
        raise ConfigError("POSTGRES_CONNECTION_STRING is not set")
    return settings.postgres_connection_string.get_secret_value()


def _records(kind: Kind, rows: list[tuple[Any, ...]]) -> list[Record]:
    return [
        Record(kind, rid, part, data, ver, pos, sub, deleted)
        for rid, part, sub, data, ver, pos, deleted in rows
    ]


def _write_tombstones(cur: Any, tombstones: Sequence[Tombstone]) -> Written:
    ordered = sorted(tombstones, key=lambda t: (t.scope, t.key))
    stored = execute_values(
        cur, TOMBSTONE_UPSERT, [(t.scope, t.key, t.version) for t in ordered], fetch=True
    )
    written: Written = {key_of(Tombstone(scope, key, v)): v for scope, key, v in stored}
    for scope, deletes in TOMBSTONE_DELETES.items():
        keyed = [(t.key, t.version) for t in ordered if t.scope == scope]
        for delete in deletes if keyed else ():
            execute_values(cur, delete, keyed)
    return written


def _bucket(scope: str, key: str) -> int:
    return zlib.crc32(f"{scope}\x00{key}".encode()) % _LOCK_BUCKETS


def _lock_partitions(
    cur: Any, grouped: dict[Kind, list[Record]], tombstones: Sequence[Tombstone]
) -> None:
    # A tombstone takes its partition's lock exclusively, saves take theirs shared: a save
    # that checked for tombstones before an erase committed cannot then slip its older row
    # past the erase's DELETE. Acquired in bucket order, so batches never deadlock on them.
    exclusive = {_bucket(t.scope, t.key) for t in tombstones}
    # A batch's records share few partitions: each one's bucket is computed once.
    partitions = {(SCOPE_OF[kind], r.partition) for kind, recs in grouped.items() for r in recs}
    shared = {_bucket(scope, key) for scope, key in partitions}
    buckets = sorted(exclusive | shared)
    flags = [b in exclusive for b in buckets]
    cur.execute(_LOCK_SQL, (_LOCK_SPACE, _LOCK_SPACE, buckets, flags))
