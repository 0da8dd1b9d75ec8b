"""PostgreSQL-only behaviour: schema upgrades, migrations, and a pool that heals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from storage import PostgreSQLClient, StorageError
from storage.ids import state_row_id
from storage.postgres_schema import MIGRATIONS
from storage.versions import new_version
from tests.services import fresh_pg_database

SEED_DDL = MIGRATIONS[0][1]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


def _execute(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_seed_database_is_upgraded_in_place(pg_url: str) -> None:
    _execute(pg_url, SEED_DDL)
    _execute(
        pg_url,
        "INSERT INTO agent_states (id, agent_id, state_id, state, timestamp) VALUES "
        "('a_b_c', 'a_b', 'c', '{\"seed\": 1}', '2024-01-01'),"
        "('x|y_z', 'x|y', 'z', '{\"seed\": 2}', '2024-01-01');"
        "INSERT INTO agent_tasks (id, agent_id, task_id, task_data) VALUES "
        "('a_t', 'a', 't', '{\"seed\": 3}');"
        "INSERT INTO conversations (id, conversation_id, message, timestamp) VALUES "
        "('m2', 'c', '{\"n\": 2}', '2024-01-02'), ('m1', 'c', '{\"n\": 1}', '2024-01-01');"
        "INSERT INTO transactions (id, case_id, transaction, timestamp) VALUES "
        "('t1', 'k', '{\"amount\": 5}', '2024-01-01'),"
        "('t2', 'k', '{\"id\": \"t2\", \"amount\": 6}', '2024-01-02');",
    )
    with PostgreSQLClient(postgres_connection_string=pg_url) as client:
        assert client.get_state("a_b", "c") == {"seed": 1}
        assert client.get_state("x|y", "z") == {"seed": 2}
        assert client.get_task("a", "t") == {"seed": 3}
        assert client.get_conversation_history("c") == [{"n": 1}, {"n": 2}]
        assert client.get_transactions("k") == [
            {"id": "t1", "amount": 5},
            {"id": "t2", "amount": 6},
        ]
        # Rows whose seed ids would collide with the new scheme keep working side by side.
        client.save_state("x", "y_z", {"new": True})
        client.save_state("a", "b_c", {"new": True})
        assert client.get_state("x|y", "z") == {"seed": 2}
        assert client.get_state("x", "y_z") == {"new": True}
        client.save_state("a_b", "c", {"seed": "updated"})
        assert client.get_state("a_b", "c") == {"seed": "updated"}
        client.save_conversation("c", {"n": 3})
        assert client.get_conversation_history("c") == [{"n": 1}, {"n": 2}, {"n": 3}]
        client.save_transactions("k", [{"id": "t1", "amount": 50}])
        assert client.get_transactions("k")[0] == {"id": "t1", "amount": 50}
    columns = _execute(
        pg_url,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name IN ('version', 'position') "
        "AND table_name IN ('agent_states', 'agent_tasks', 'conversations', 'transactions')",
    )
    assert len(columns) == 6


def test_migrations_are_recorded_and_run_once(pg_url: str) -> None:
    PostgreSQLClient(postgres_connection_string=pg_url).close()
    PostgreSQLClient(postgres_connection_string=pg_url).close()
    rows = _execute(pg_url, "SELECT version, name FROM agentstore_migrations ORDER BY version")
    assert rows == [(n, name) for n, (name, _) in enumerate(MIGRATIONS, start=1)]
    indexes = {r[0] for r in _execute(pg_url, "SELECT indexname FROM pg_indexes")}
    assert {
        "idx_agent_states_agent_state",
        "idx_agent_tasks_agent_task",
        "idx_conversations_conv_id",
        "idx_transactions_case_id",
    } <= indexes


def test_killed_pooled_connections_are_replaced(pg_url: str) -> None:
    with PostgreSQLClient(
        postgres_connection_string=pg_url, postgres_pool_min=3, postgres_pool_max=3
    ) as client:
        client.save_state("a", "s", {"x": 0})
        for round_no in range(3):
            killed = _execute(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'agentstore' AND datname = current_database()",
            )
            assert killed, "the client should hold pooled connections"
            assert client.get_state("a", "s") == {"x": round_no}
            client.save_state("a", "s", {"x": round_no + 1})
        assert client.get_state("a", "s") == {"x": 3}


def test_connections_return_to_the_pool_on_errors(pg_url: str) -> None:
    with PostgreSQLClient(postgres_connection_string=pg_url, postgres_pool_max=2) as client:
        _execute(pg_url, "ALTER TABLE agent_tasks ADD CONSTRAINT no_x CHECK (task_id <> 'x')")
        for _ in range(10):
            with pytest.raises(StorageError):
                client.save_task("a", "x", {"n": 1})
        client.save_task("a", "y", {"n": 2})
        assert client.get_task("a", "y") == {"n": 2}


def test_a_failed_batch_writes_nothing(pg_url: str) -> None:
    from storage.ops import make_op

    with PostgreSQLClient(postgres_connection_string=pg_url) as client:
        _execute(pg_url, "ALTER TABLE agent_tasks ADD CONSTRAINT no_x CHECK (task_id <> 'x')")
        ops = [
            make_op("save_state", {"agent_id": "a", "state_id": "s", "state": {}}),
            make_op("save_task", {"agent_id": "a", "task_id": "x", "task_data": {}}),
        ]
        with pytest.raises(StorageError):
            client.apply(ops)
        assert client.get_state("a", "s") is None


def test_more_threads_than_connections_wait_their_turn(pg_url: str) -> None:
    errors: list[BaseException] = []
    with PostgreSQLClient(postgres_connection_string=pg_url, postgres_pool_max=2) as client:

        def run(n: int) -> None:
            try:
                for i in range(50):
                    client.save_state(f"a{n}", "s", {"i": i})
                    client.get_state(f"a{n}", "s")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors[:3]
        assert [client.get_state(f"a{n}", "s") for n in range(8)] == [{"i": 49}] * 8


def test_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = "postgresql://user:s3cr3t-pw@127.0.0.1:1/db"
    with pytest.raises(StorageError) as info:
        PostgreSQLClient(postgres_connection_string=url, postgres_connect_timeout_s=2)
    assert "s3cr3t-pw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def _wait_for(url: str, event: str, query: str, done: threading.Event | None = None) -> bool:
    """Wait until an agentstore connection running `query` (anywhere in its statements) waits
    on a lock of kind `event`.

    False if `done` was set first.
    """
    for _ in range(1_200):  # 60 s: generous under load, bounded
        if _execute(url, _WAITING, (event, f"%{query}%"))[0][0]:
            return True
        if done is not None and done.is_set():
            return False
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {query!r} to wait on a {event} lock")


_WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'agentstore' "
    "AND datname = current_database() AND wait_event_type = 'Lock' "
    "AND wait_event = %s AND query LIKE %s"
)


def test_erase_waits_for_a_save_that_passed_its_tombstone_check(pg_url: str) -> None:
    """A save holds its partition lock from its tombstone check to its commit.

    The save is held between the two: the test's uncommitted insert of the same key makes
    the save's upsert wait after it found no tombstone. An erase started then must wait for
    the save, and delete its row; without the lock it deletes nothing, and the save, once
    released, stores a row older than the erase.
    """
    store = PostgreSQLClient(postgres_connection_string=pg_url)
    barrier = psycopg2.connect(pg_url)
    threads: list[threading.Thread] = []
    try:
        with barrier.cursor() as cur:
            cur.execute(
                "INSERT INTO agent_states (id, agent_id, state_id, state, version) "
                "VALUES (%s, 'a', 's', '{}', '0')",
                (state_row_id("a", "s"),),
            )
        save_version, erase_version = new_version(), new_version()
        erased = threading.Event()
        errors: list[BaseException] = []

        def run(action: Callable[[], object], finished: threading.Event | None = None) -> None:
            try:
                action()
            except BaseException as exc:
                errors.append(exc)
            if finished is not None:
                finished.set()

        threads.append(
            threading.Thread(
                target=run,
                args=(lambda: store.save_state("a", "s", {"late": 1}, version=save_version),),
            )
        )
        threads[0].start()
        _wait_for(pg_url, "transactionid", "INSERT INTO agent_states")
        threads.append(
            threading.Thread(
                target=run, args=(lambda: store.erase_agent("a", version=erase_version), erased)
            )
        )
        threads[1].start()
        # With the lock, the erase queues behind the save; without it, it just finishes.
        _wait_for(pg_url, "advisory", "SELECT CASE WHEN x", erased)
        barrier.rollback()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert not any(thread.is_alive() for thread in threads)
        assert store.get_state("a", "s") is None, "the save older than the erase survived it"
    finally:
        barrier.rollback()
        barrier.close()
        for thread in threads:
            thread.join(timeout=60)
        store.close()
