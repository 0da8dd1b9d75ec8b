"""Draining a filled queue into PostgreSQL, and the raw upsert loop it is measured against."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import redis
from psycopg2.extras import execute_values

from broker import keys
from producer import Producer
from storage import PostgreSQLClient
from storage.ids import row_id
from storage.pg_url import options
from storage.postgres_schema import MIGRATIONS

from ..services import WorkerBox, database
from .workload import cpu_seconds, key, state


def raw_upsert(admin: str, n: int, page: int = 1000) -> float:
    """Rows/s of plain `execute_values` upserts into the seed's exact table, page per commit."""
    rows = []
    for i in range(n):
        agent, sid = key(i)
        rows.append((row_id(("a", agent), ("s", sid)), agent, sid, json.dumps(state(i))))
    with database(admin, "agentstore_raw") as url:
        conn = psycopg2.connect(url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(MIGRATIONS[0][1])
            sql = (
                "INSERT INTO agent_states (id, agent_id, state_id, state) VALUES %s "
                "ON CONFLICT (agent_id, state_id) DO UPDATE SET state = EXCLUDED.state, "
                "timestamp = CURRENT_TIMESTAMP"
            )
            with conn.cursor() as cur:
                started = time.perf_counter()
                for start in range(0, n, page):
                    execute_values(cur, sql, rows[start : start + page], page_size=page)
                    conn.commit()
                elapsed = time.perf_counter() - started
        finally:
            conn.close()
    return n / elapsed


def worker_env(broker: str, db: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTORE_", "COSMOS_"))}
    env.update(CELERY_BROKER_URL=broker, POSTGRES_CONNECTION_STRING=db, **extra)
    return env


def _count(db: str, table: str = "agent_states") -> int:
    with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


def drain_until(
    box: WorkerBox, done: Callable[[], bool], timeout: float = 600, every: float = 0.005
) -> float:
    """Resume the paused workers; seconds until `done()`, checked `every` seconds."""
    started = time.perf_counter()
    box.resume()
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline or box.proc.poll() is not None:
            raise RuntimeError(f"drain did not finish; see {box.log_path}")
        time.sleep(every)
    return time.perf_counter() - started


@dataclass
class Drain:
    saves: int
    fill_s: float
    drain_s: float
    peak_rss_mb: dict[int, float]
    cpu_us_per_save: dict[str, float] = field(default_factory=dict)
    producer_cpu_us: float = 0.0  # this process's CPU per save while filling the queue

    @property
    def rate(self) -> float:
        return self.saves / self.drain_s


def agentstore_drain(
    broker: str,
    admin: str,
    n: int,
    ops_per_message: int | None,
    *,
    overlap: bool = False,
    env: dict[str, str] | None = None,
    after: Callable[[], None] | None = None,
) -> Drain:
    """Fill the queue with `n` saves (buffered, `ops_per_message` per message, or durable
    single-save messages if None) while the worker box is paused, then time its drain;
    `env` is added to the workers' environment; `after()` is called once it is drained and
    measured, while the workers still run.

    With `overlap`, the workers run while the producer publishes: `drain_s` (and the CPU
    figures) then span from the first save to the last one applied, end to end.
    """
    with database(admin) as db:
        PostgreSQLClient(postgres_connection_string=db).close()  # schema before the clock
        client = redis.Redis.from_url(broker)
        client.flushall()
        with WorkerBox("worker", worker_env(broker, db, **(env or {}))) as box:
            box.wait_ready()
            if not overlap:
                box.pause()
            processes = _processes(box, client, admin, db)
            before = {name: cpu_seconds(pids) for name, pids in processes.items()}
            started = time.perf_counter()
            cpu_started = time.process_time()
            if ops_per_message is None:
                prod = Producer(broker_url=broker)
            else:
                prod = Producer(broker_url=broker, linger_ms=5, max_batch=ops_per_message)
            with prod:
                for i in range(n):
                    prod.save_state(*key(i), state(i))
            fill = time.perf_counter() - started
            producer_cpu = (time.process_time() - cpu_started) / n * 1e6
            if not overlap:
                assert client.zcard(keys.PENDING_KEY) > 0
                # Only the drain's own CPU: what the paused box used before is taken out.
                before = {name: cpu_seconds(pids) for name, pids in processes.items()}
            drain = drain_until(box, lambda: client.zcard(keys.PENDING_KEY) == 0)
            if overlap:
                drain += fill
            cpu = {
                name: (cpu_seconds(pids) - before[name]) / n * 1e6
                for name, pids in processes.items()
            }
            peaks = box.peak_rss_mb()
            if after is not None:
                after()
        rows = _count(db)
        client.close()
        if rows != n:
            raise RuntimeError(f"{rows} rows for {n} saves")
    return Drain(n, fill, drain, peaks, cpu, producer_cpu)


def _processes(box: WorkerBox, client: redis.Redis, admin: str, db: str) -> dict[str, list[int]]:
    """Who works during a drain: the worker's main process and children, the database's
    backends for this database, and redis-server."""
    pids = box.pids()
    return {
        "worker main process": pids[:1],
        "worker children": pids[1:],
        "postgres backends": database_backends(admin, db),
        "redis-server": [redis_server_pid(client)],
    }


def database_backends(admin: str, db: str) -> list[int]:
    """The PostgreSQL backends connected to `db` now."""
    with contextlib.closing(psycopg2.connect(admin)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (options(db)["dbname"],))
        return [int(row[0]) for row in cur.fetchall()]


def redis_server_pid(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("server")
    return int(info["process_id"])
