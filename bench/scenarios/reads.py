"""Reads through the Producer vs the same statements on a raw psycopg2 connection."""

from __future__ import annotations

import statistics
import time
from typing import Any

from producer import Producer
from storage import PostgreSQLClient
from storage.ops import make_op

from ..report import Figure
from ..services import database
from .context import Context
from .workload import key, state


def read_latency(broker: str, admin: str, n: int) -> dict[str, float]:
    """`get_state` and a 1,000-message history through the Producer vs raw psycopg2."""
    with database(admin, "agentstore_reads") as db:
        store = PostgreSQLClient(postgres_connection_string=db)
        ops = [
            make_op("save_state", {"agent_id": a, "state_id": s, "state": state(i)})
            for i in range(1000)
            for a, s in [key(i)]
        ]
        ops += [
            make_op("save_conversation", {"conversation_id": "conv", "message": state(i)})
            for i in range(1000)
        ]
        store.apply(ops)
        store.close()
        ours_get: list[float] = []
        raw_get_ns: list[float] = []
        ours_hist: list[float] = []
        raw_hist: list[float] = []
        clock = time.perf_counter_ns
        # The very statements the store runs, on one open connection: only the client differs.
        get_sql = (
            "SELECT state FROM agent_states WHERE agent_id = %s AND state_id = %s AND NOT deleted"
        )
        history_sql = (
            "SELECT message FROM conversations WHERE conversation_id = %s ORDER BY position"
        )

        def raw_get(a: str, s: str) -> None:
            cur.execute(get_sql, (a, s))
            cur.fetchall()

        def raw_history() -> int:
            cur.execute(history_sql, ("conv",))
            return len(cur.fetchall())

        with Producer(broker_url=broker, postgres_connection_string=db) as prod:
            prod.get_state(*key(0))  # opens the pool: one connection, which every read reuses
            # The baseline runs on that very connection while it idles in the pool (one
            # thread): two connections' server processes differ by 0.7-1.7x in the same
            # alternating loop on 2 shared cores, by where the scheduler puts them, which
            # would be counted as the client's cost.
            cur = _pooled_connection(prod).cursor()
            for i in range(n + 50):
                a, s = key(i % 1000)
                # Alternating which goes first cancels any advantage of going second.
                first, second = (raw_get, prod.get_state) if i % 2 else (prod.get_state, raw_get)
                t0 = clock()
                first(a, s)
                t1 = clock()
                second(a, s)
                t2 = clock()
                if i >= 50:
                    ours, theirs = (t2 - t1, t1 - t0) if i % 2 else (t1 - t0, t2 - t1)
                    ours_get.append(ours)
                    raw_get_ns.append(theirs)
            for i in range(n // 5 + 5):
                t0 = clock()
                got = raw_history()
                t1 = clock()
                mine = prod.get_conversation_history("conv")
                t2 = clock()
                assert got == len(mine) == 1000
                if i >= 5:
                    raw_hist.append(t1 - t0)
                    ours_hist.append(t2 - t1)
    return {
        "get_state_p50_us": statistics.median(ours_get) / 1000,
        "raw_get_p50_us": statistics.median(raw_get_ns) / 1000,
        "history_p50_ms": statistics.median(ours_hist) / 1e6,
        "raw_history_p50_ms": statistics.median(raw_hist) / 1e6,
    }


def _pooled_connection(prod: Producer) -> Any:
    reader = prod._store()
    if not isinstance(reader, PostgreSQLClient):
        raise TypeError(f"the reads bench needs PostgreSQL, not {type(reader).__name__}")
    idle: list[Any] = reader._conns.get()._free
    if len(idle) != 1:
        raise RuntimeError(f"expected one idle pooled connection, found {len(idle)}")
    return idle[0]


def reads(ctx: Context) -> None:
    ctx.step("reads")
    rd = read_latency(ctx.broker, ctx.admin, ctx.sizes.reads)
    ctx.results.raw["reads"] = rd
    r1 = rd["get_state_p50_us"] / rd["raw_get_p50_us"]
    r2 = rd["history_p50_ms"] / rd["raw_history_p50_ms"]
    ctx.results.figures.append(
        Figure(
            "get_state p50",
            rd["get_state_p50_us"],
            "µs",
            rd["raw_get_p50_us"],
            "raw psycopg2 select",
            r1,
            "<= 1.1x",
            r1 <= 1.1,
        )
    )
    ctx.results.figures.append(
        Figure(
            "get_conversation_history p50, 1,000 messages",
            rd["history_p50_ms"],
            "ms",
            rd["raw_history_p50_ms"],
            "raw psycopg2 select",
            r2,
            "<= 1.1x",
            r2 <= 1.1,
        )
    )
