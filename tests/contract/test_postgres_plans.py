"""PostgreSQL reads that stay cheap as the tables grow: the latest checkpoint of a long thread
is one index row, and no session of ours compiles a statement with JIT."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from storage import PostgreSQLClient
from storage import postgres_reads as pg
from storage.checkpoint_reads import Wanted
from storage.config import load_settings
from storage.postgres_async import AsyncPostgresReader
from storage.postgres_reads import Query
from tests.contract.test_checkpoints import put
from tests.services import fresh_pg_database

CHECKPOINTS = 300


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def client(pg_url: str) -> Iterator[PostgreSQLClient]:
    store = PostgreSQLClient(postgres_connection_string=pg_url)
    yield store
    store.close()


def _setting(rows: list[tuple[Any, ...]]) -> str:
    return str(rows[0][0])


def test_no_session_of_ours_compiles_with_jit(pg_url: str, client: PostgreSQLClient) -> None:
    show: Query[str] = Query("SHOW jit", (), _setting)
    assert client._query(show) == "off"

    async def on_the_async_reader() -> str:
        reader = AsyncPostgresReader(load_settings(postgres_connection_string=pg_url))
        try:
            return await reader.query(show)
        finally:
            await reader.aclose()

    assert asyncio.run(on_the_async_reader()) == "off"


def _scans_of(plan: dict[str, Any], table: str) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Relation Name") == table else []
    for child in plan.get("Plans", []):
        found += _scans_of(child, table)
    return found


def _prepared(sql: str) -> str:
    # psycopg's placeholders as PREPARE's: each %s the next $n, %% a literal %.
    numbers = itertools.count(1)
    return re.sub("%s|%%", lambda m: "%" if m[0] == "%%" else f"${next(numbers)}", sql)


def _plan(pg_url: str, query: Query[Any], generic: bool) -> dict[str, Any]:
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ANALYZE checkpoints")  # as autovacuum would: the planner sees the thread
            explain = "EXPLAIN (ANALYZE, FORMAT JSON) "
            if generic:
                # The plan a prepared statement keeps (the asyncio reader prepares its reads).
                cur.execute("SET plan_cache_mode = force_generic_plan")
                cur.execute(f"PREPARE load AS {_prepared(query.sql)}")
                marks = ", ".join(["%s"] * len(query.params))
                cur.execute(f"{explain}EXECUTE load({marks})", query.params)
            else:
                cur.execute(explain + query.sql, query.params)
            (explained,) = cur.fetchall()  # psycopg2 decodes the json
            plan: dict[str, Any] = explained[0][0]["Plan"]
            return plan
    finally:
        conn.close()


@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
@pytest.mark.parametrize("ns", ["", None], ids=["namespace", "every-namespace"])
def test_the_latest_checkpoint_of_a_long_thread_reads_one_row(
    pg_url: str, client: PostgreSQLClient, ns: str | None, generic: bool
) -> None:
    ops = [put("long", f"c{n:04d}", {"x": b"v"}) for n in range(CHECKPOINTS)]
    ops += [put(f"other{n}", f"c{k}", {"x": b"v"}) for n in range(1000) for k in range(3)]
    client.apply(ops)
    plan = _plan(pg_url, pg.load_checkpoints(Wanted("long", ns, limit=1)), generic)
    (scan,) = _scans_of(plan, "checkpoints")
    # A thread's checkpoints read in full and sorted would be CHECKPOINTS rows here.
    assert scan["Actual Rows"] == 1, scan
    (found,) = client.load_checkpoints(Wanted("long", ns, limit=1))
    assert found.checkpoint.data["checkpoint_id"] == f"c{CHECKPOINTS - 1:04d}"
