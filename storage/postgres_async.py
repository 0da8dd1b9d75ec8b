"""PostgreSQL reads for asyncio on psycopg 3's native async driver.

`AsyncProducer` reads through this rather than running the blocking client on threads:
reader threads decoding rows contend with the event loop for the GIL, and each handoff can
cost the loop a switch interval (5 ms); the loop's largest stall under 1,000 concurrent saves
and reads fell from 65-200 ms (8 threads) to 3-11 ms (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from .config import Settings, mask_url
from .errors import StorageError, StoreUnavailableError, TransientStorageError
from .postgres import SESSION_SETUP, PostgreSQLClient, _connection_string
from .postgres_reads import Query

T = TypeVar("T")


class AsyncPostgresReader:
    """`postgres_reads` queries on a psycopg 3 `AsyncConnectionPool` of at most
    `POSTGRES_POOL_MAX` connections, opened on first use (after the schema is migrated, as
    the blocking client does). Use it on one event loop; `aclose()` closes the pool."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        dsn = _connection_string(settings)
        self._dsn = dsn
        self._where = mask_url(dsn) if "://" in dsn else "<libpq connection string>"
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._guard: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> psycopg_pool.AsyncConnectionPool:
        async with self._opening:
            if self._pool is None:
                # Migrates (or checks) the schema and reports an unreachable server at once.
                await asyncio.get_running_loop().run_in_executor(None, self._migrate)
                s = self._settings
                pool = psycopg_pool.AsyncConnectionPool(
                    self._dsn,
                    min_size=min(s.postgres_pool_min, s.postgres_pool_max),
                    max_size=s.postgres_pool_max,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": s.postgres_connect_timeout_s,
                        "application_name": "agentstore",
                    },
                    timeout=float(s.postgres_connect_timeout_s),
                    configure=_set_up,
                    open=False,
                )
                await pool.open()
                self._pool = pool
                self._guard = asyncio.get_running_loop().create_task(_close_with_the_loop(pool))
            return self._pool

    def _migrate(self) -> None:
        PostgreSQLClient(self._settings).close()

    async def query(self, query: Query[T]) -> T:
        """Run `query` and shape its rows; a connection found broken is replaced and the
        read retried (as the blocking client does)."""
        pool = self._pool or await self._open()
        attempts = self._settings.postgres_pool_max + 1
        for attempt in range(1, attempts + 1):
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(query.sql, query.params)
                    rows = await cursor.fetchall()
                return query.shape(rows)
            except psycopg_pool.PoolTimeout as exc:
                raise StoreUnavailableError(
                    f"no PostgreSQL connection to {self._where} within {pool.timeout:g} s: {exc}"
                ) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if attempt == attempts:
                    raise TransientStorageError(f"PostgreSQL connection failed: {exc}") from None
            except psycopg.Error as exc:
                raise StorageError(f"PostgreSQL rejected the read: {exc}".strip()) from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        guard, self._guard = self._guard, None
        if pool is not None:
            await pool.close()
        if guard is not None:
            guard.cancel()


async def _set_up(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(SESSION_SETUP)


async def _close_with_the_loop(pool: psycopg_pool.AsyncConnectionPool) -> None:
    # psycopg_pool's maintenance workers take a cancellation that lands while they connect
    # for a failed connection attempt and go on waiting for work: a loop ending with the
    # pool open (asyncio.run cancels every task) would wait for them for ever. Cancelled
    # with them, this closes the pool, which tells them to stop.
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        await pool.close()
        raise
