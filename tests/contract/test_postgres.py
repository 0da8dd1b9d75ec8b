"""PostgreSQL-only behaviour: schema upgrades, migrations, and a pool that heals."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg2
import pytest

from storage import PostgreSQLClient, StorageError
from storage.postgres_schema import MIGRATIONS
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
