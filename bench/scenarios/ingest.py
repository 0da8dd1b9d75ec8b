"""The database's own limit: the fastest raw way to write the drain's saves into agentstore's
schema with the same version condition, and what it costs PostgreSQL per row.

Each of `connections` threads owns a connection and a disjoint slice of the rows, and per
page runs `COPY` into a temporary table, then `INSERT … SELECT … ON CONFLICT … DO UPDATE …
WHERE version <`, then commits. The COPY text is built before the clock starts: this is what
PostgreSQL can take, not what a client can produce.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass

import psycopg2
import pydantic_core

from storage import PostgreSQLClient
from storage.ids import state_row_id
from storage.pg_url import options

from ..services import database
from .workload import cpu_seconds, key, state

_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS bench_in (id text, agent_id text, state_id text, "
    "state jsonb, version text) ON COMMIT DELETE ROWS"
)
_MERGE = (
    "INSERT INTO agent_states AS t (id, agent_id, state_id, state, version, deleted) "
    "SELECT id, agent_id, state_id, state, version, false FROM bench_in "
    "ON CONFLICT (agent_id, state_id) DO UPDATE SET state = EXCLUDED.state, "
    "version = EXCLUDED.version, deleted = false, timestamp = CURRENT_TIMESTAMP "
    "WHERE t.version < EXCLUDED.version"
)
VERSION = "000000000000001.000000.bench000"


@dataclass
class Ingest:
    rows: int
    seconds: float
    pg_cpu_us_per_row: float  # the database's backends, user + system
    client_cpu_us_per_row: float  # the loading threads: sending the COPY text, the merges

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _copy_text(lo: int, hi: int) -> str:
    lines = []
    for i in range(lo, hi):
        agent, sid = key(i)
        data = pydantic_core.to_json(state(i)).decode().replace("\\", "\\\\")
        lines.append(f"{state_row_id(agent, sid)}\t{agent}\t{sid}\t{data}\t{VERSION}\n")
    return "".join(lines)


def copy_merge(admin: str, n: int, connections: int = 2, page: int = 5000) -> Ingest:
    """Rows/s and PostgreSQL CPU per row of `n` distinct states, COPY + merge per page."""
    with database(admin, "agentstore_copy") as db:
        PostgreSQLClient(postgres_connection_string=db).close()  # agentstore's migrations
        pages = [_copy_text(lo, min(lo + page, n)) for lo in range(0, n, page)]
        conns = [psycopg2.connect(db) for _ in range(connections)]
        try:
            for conn in conns:
                with conn, conn.cursor() as cur:
                    cur.execute(_TEMP)
            backends = [conn.get_backend_pid() for conn in conns]
            failures: list[BaseException] = []
            client_cpu: list[float] = []

            def load(conn: psycopg2.extensions.connection, mine: list[str]) -> None:
                started = time.thread_time()
                try:
                    with conn.cursor() as cur:
                        for text in mine:
                            cur.copy_expert("COPY bench_in FROM STDIN", io.StringIO(text))
                            cur.execute(_MERGE)
                            conn.commit()
                except BaseException as exc:  # reported by the caller
                    failures.append(exc)
                client_cpu.append(time.thread_time() - started)

            threads = [
                threading.Thread(target=load, args=(conn, pages[i::connections]))
                for i, conn in enumerate(conns)
            ]
            cpu = cpu_seconds(backends)
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(backends) - cpu
            if failures or any(t.is_alive() for t in threads):
                raise RuntimeError(f"COPY baseline failed: {failures[:1]}")
        finally:
            for conn in conns:
                conn.close()
        with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM agent_states")
            row = cur.fetchone()
            if row is None or row[0] != n:
                raise RuntimeError(f"COPY baseline stored {row} rows of {n} in {options(db)}")
    return Ingest(n, elapsed, cpu / n * 1e6, sum(client_cpu) / n * 1e6)
