"""`AsyncProducer`'s reads of PostgreSQL on psycopg 3's async driver: no reader thread, the
blocking client's results, and a connection killed under it replaced."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import psycopg
import psycopg2
import pytest

from producer import AsyncProducer
from storage import create_storage_client
from storage import postgres_reads as pg
from storage.config import load_settings
from storage.postgres_async import AsyncPostgresReader


def _reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("agentstore-read")]


def test_reads_run_on_the_loop_and_match_the_blocking_client(broker: str, database: str) -> None:
    with create_storage_client(postgres_connection_string=database) as seed:
        seed.save_state("a", "s1", {"n": 1})
        seed.save_task("a", "t1", {"t": 1})
        for i in range(5):
            seed.save_conversation("c", {"i": i}, version=i + 1)
        seed.save_transactions("case", [{"id": "x", "amount": 3}])
        expected = (
            seed.get_state("a", "s1"),
            seed.get_task("a", "t1"),
            seed.get_conversation_history("c", 2),
            seed.get_transactions("case"),
            seed.list_states("a"),
            seed.list_tasks("a"),
            seed.get_state("a", "missing"),
        )

    async def body() -> list[object]:
        async with AsyncProducer(broker_url=broker, postgres_connection_string=database) as store:
            return list(
                await asyncio.gather(
                    store.get_state("a", "s1"),
                    store.get_task("a", "t1"),
                    store.get_conversation_history("c", 2),
                    store.get_transactions("case"),
                    store.list_states("a"),
                    store.list_tasks("a"),
                    store.get_state("a", "missing"),
                )
            )

    before = _reader_threads()
    got = asyncio.run(body())
    assert tuple(got) == expected
    assert expected[2] == [{"i": 3}, {"i": 4}]
    assert _reader_threads() == before, "a PostgreSQL read went through a reader thread"


def test_a_killed_connection_is_replaced_and_the_read_retried(broker: str, database: str) -> None:
    with create_storage_client(postgres_connection_string=database) as seed:
        seed.save_state("a", "s1", {"n": 1})

    def kill_our_connections() -> int:
        with contextlib.closing(psycopg2.connect(database)) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = 'agentstore'"
            )
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    async def body() -> tuple[int, list[object]]:
        async with AsyncProducer(broker_url=broker, postgres_connection_string=database) as store:
            assert await store.get_state("a", "s1") == {"n": 1}  # the pool is open
            killed = kill_our_connections()
            return killed, [await store.get_state("a", "s1") for _ in range(5)]

    killed, reads = asyncio.run(body())
    assert killed >= 1
    assert reads == [{"n": 1}] * 5


def test_a_loop_ended_with_the_reader_open_and_connecting_does_not_hang(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg_pool's workers swallow a cancellation that lands while they connect; a loop
    ended by `asyncio.run` with the pool open and a connection on its way used to wait for
    them for ever."""
    connect = psycopg.AsyncConnection.connect
    calls = 0

    async def first_fast_then_stuck(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(3600)  # a server that never answers
        return await connect(*args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", first_fast_then_stuck)
    settings = load_settings(postgres_connection_string=database, postgres_pool_min=2)

    async def main() -> None:
        reader = AsyncPostgresReader(settings)  # left open on purpose
        assert await reader.query(pg.get_state("a", "s")) is None
        while calls < 2:  # the second connection is under way
            await asyncio.sleep(0.01)

    ended = threading.Event()

    def run() -> None:
        asyncio.run(main())
        ended.set()

    threading.Thread(target=run, daemon=True).start()
    assert ended.wait(timeout=30), "asyncio.run never returned: the loop waits for the pool"
