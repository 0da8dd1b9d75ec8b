"""Migration 3: one index per (agent_id, sub id) key, under the seed's index names."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest

from storage import PostgreSQLClient
from storage.postgres_schema import MIGRATIONS
from tests.services import fresh_pg_database

SEED_INDEXES = {
    "idx_agent_states_agent_state",
    "idx_agent_tasks_agent_task",
    "idx_conversations_conv_id",
    "idx_transactions_case_id",
}


@pytest.fixture(params=["fresh", "seed"])
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_pg_database() as url:
        if request.param == "seed":
            _execute(url, MIGRATIONS[0][1])
        yield url


def _execute(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _indexes(url: str, table: str) -> dict[str, str]:
    rows = _execute(url, f"SELECT indexname, indexdef FROM pg_indexes WHERE tablename = '{table}'")
    return {str(name): str(definition) for name, definition in rows}


def test_each_key_has_one_unique_index_named_as_the_seed_named_it(pg_url: str) -> None:
    PostgreSQLClient(postgres_connection_string=pg_url).close()
    PostgreSQLClient(postgres_connection_string=pg_url).close()  # a second start changes nothing
    names = {str(r[0]) for r in _execute(pg_url, "SELECT indexname FROM pg_indexes")}
    assert names >= SEED_INDEXES
    for table, index, sub in [
        ("agent_states", "idx_agent_states_agent_state", "state_id"),
        ("agent_tasks", "idx_agent_tasks_agent_task", "task_id"),
    ]:
        indexes = _indexes(pg_url, table)
        on_key = [d for d in indexes.values() if d.endswith(f"(agent_id, {sub})")]
        assert on_key == [indexes[index]], indexes
        assert indexes[index].startswith("CREATE UNIQUE INDEX")


def test_uniqueness_and_upserts_still_hold(pg_url: str) -> None:
    with PostgreSQLClient(postgres_connection_string=pg_url) as client:
        client.save_state("a", "s", {"n": 1})
        client.save_state("a", "s", {"n": 2})
        client.save_task("a", "t", {"n": 1})
        client.save_task("a", "t", {"n": 2})
        assert client.get_state("a", "s") == {"n": 2}
        assert client.get_task("a", "t") == {"n": 2}
    with pytest.raises(psycopg2.errors.UniqueViolation):
        _execute(
            pg_url,
            "INSERT INTO agent_states (id, agent_id, state_id, state, version) "
            "VALUES ('other id', 'a', 's', '{}', '0')",
        )
