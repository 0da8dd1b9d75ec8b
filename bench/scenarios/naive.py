"""The naive baseline: the same saves as one plain Celery task each (`bench/naive_worker.py`)."""

from __future__ import annotations

import contextlib
import time

import psycopg2
import redis

from storage import PostgreSQLClient

from .. import naive_worker
from ..report import Figure
from ..services import WorkerBox, database
from .context import Context
from .drain import Drain, drain_until, worker_env
from .workload import key, state


def naive_drain(broker: str, admin: str, n: int) -> Drain:
    """Fill the queue with `n` one-task-per-save messages while the workers are paused, then
    time their drain."""
    with database(admin, "agentstore_naive") as db:
        PostgreSQLClient(postgres_connection_string=db).close()
        client = redis.Redis.from_url(broker)
        client.flushall()
        with WorkerBox("bench.naive_worker", worker_env(broker, db)) as box:
            box.wait_ready()
            box.pause()
            app = naive_worker.app
            app.conf.broker_url = broker
            started = time.perf_counter()
            with app.producer_pool.acquire(block=True) as producer:
                for i in range(n):
                    app.send_task(
                        naive_worker.TASK_NAME, args=[*key(i), state(i)], producer=producer
                    )
            fill = time.perf_counter() - started
            # One open connection, counting every 20 ms: a new connection per check forks
            # a PostgreSQL backend each time, CPU the naive workers would be robbed of.
            with contextlib.closing(psycopg2.connect(db)) as conn:
                conn.autocommit = True
                cur = conn.cursor()

                def done() -> bool:
                    cur.execute("SELECT count(*) FROM agent_states")
                    row = cur.fetchone()
                    return row is not None and int(row[0]) >= n

                drain = drain_until(box, done, every=0.02)
            peaks = box.peak_rss_mb()
        client.close()
    return Drain(n, fill, drain, peaks)


def baseline(ctx: Context) -> Drain:
    """The naive drain of this run: measured and reported the first time it is asked for."""
    if ctx.naive is None:
        ctx.step(f"naive: {ctx.sizes.naive:,} one-task-per-save messages")
        ctx.naive = naive_drain(ctx.broker, ctx.admin, ctx.sizes.naive)
        ctx.results.raw["naive_per_s"] = ctx.naive.rate
        ctx.results.figures.append(
            Figure(
                "naive drain: one Celery task per save, 2 worker processes",
                ctx.naive.rate,
                "saves/s",
                extra={"per_process_peak_rss_mb": ctx.naive.peak_rss_mb},
            )
        )
    return ctx.naive


def naive(ctx: Context) -> None:
    baseline(ctx)
