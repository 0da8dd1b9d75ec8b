"""agentstore's throughput and latency, each figure next to a raw baseline from the same run.

    .venv/bin/python -m bench.run           # make bench: full sizes (100k saves)
    .venv/bin/python -m bench.run --quick   # make bench-quick: small sizes, under 2 minutes

Starts its own redis-server on a free port, fresh PostgreSQL databases (on --pg) and the
Cosmos DB test server, runs workers as subprocesses, and stops all of it. Prints a table and
writes bench/results/<timestamp>.json and a PNG plot of throughput vs batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import redis
from psycopg2.extras import execute_values

from broker import keys, wire
from producer import Producer
from storage import PostgreSQLClient
from storage.ids import row_id
from storage.ops import encode_op, make_op
from storage.pg_url import options
from storage.postgres_schema import MIGRATIONS

from . import naive_worker
from .services import ROOT, WorkerBox, database, redis_server

RESULTS = ROOT / "bench" / "results"
SWEEP = (10, 100, 500, 1000, 2000, 5000)  # ops per transaction


@dataclass(frozen=True)
class Sizes:
    saves: int  # end-to-end, buffered
    unbuffered: int  # end-to-end, single-save messages
    naive: int  # one Celery task per save
    sweep: int  # saves per point of the batch-size sweep
    publishes: int  # durable publish latency samples
    buffered_calls: int  # buffered save_state calls in one thread
    reads: int  # read latency samples
    cosmos: int  # records per Cosmos DB apply
    rounds: int  # the main end-to-end figure and its baseline: best of this many


FULL = Sizes(100_000, 20_000, 10_000, 20_000, 5_000, 100_000, 1_000, 400, 2)
QUICK = Sizes(10_000, 5_000, 2_000, 5_000, 2_000, 30_000, 300, 150, 1)


def state(i: int) -> dict[str, Any]:
    return {"step": i, "status": "thinking", "notes": "x" * 120, "scores": [0.1, 0.2, 0.3]}


def key(i: int) -> tuple[str, str]:
    return f"agent-{i % 100}", f"state-{i}"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None  # ours relative to the baseline, in the target's direction
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


# -- PostgreSQL baselines --------------------------------------------------------------------


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


# -- end to end ------------------------------------------------------------------------------


def _worker_env(broker: str, db: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTORE_", "COSMOS_"))}
    env.update(CELERY_BROKER_URL=broker, POSTGRES_CONNECTION_STRING=db, **extra)
    return env


def _count(db: str, table: str = "agent_states") -> int:
    with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


def _drain(
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

    @property
    def rate(self) -> float:
        return self.saves / self.drain_s


def agentstore_drain(
    broker: str, admin: str, n: int, ops_per_message: int | None, **env: str
) -> Drain:
    """Fill the queue with `n` saves (buffered, `ops_per_message` per message, or durable
    single-save messages if None) while the worker box is paused, then time its drain."""
    with database(admin) as db:
        PostgreSQLClient(postgres_connection_string=db).close()  # schema before the clock
        client = redis.Redis.from_url(broker)
        client.flushall()
        with WorkerBox("worker", _worker_env(broker, db, **env)) as box:
            box.wait_ready()
            box.pause()
            started = time.perf_counter()
            if ops_per_message is None:
                with Producer(broker_url=broker) as prod:
                    for i in range(n):
                        prod.save_state(*key(i), state(i))
            else:
                with Producer(broker_url=broker, linger_ms=5, max_batch=ops_per_message) as prod:
                    for i in range(n):
                        prod.save_state(*key(i), state(i))
            fill = time.perf_counter() - started
            assert client.zcard(keys.PENDING_KEY) > 0
            processes = _processes(box, client, admin, db)
            before = {name: _cpu_seconds(pids) for name, pids in processes.items()}
            drain = _drain(box, lambda: client.zcard(keys.PENDING_KEY) == 0)
            cpu = {
                name: (_cpu_seconds(pids) - before[name]) / n * 1e6
                for name, pids in processes.items()
            }
            peaks = box.peak_rss_mb()
        rows = _count(db)
        client.close()
        if rows != n:
            raise RuntimeError(f"{rows} rows for {n} saves")
    return Drain(n, fill, drain, peaks, cpu)


def _processes(box: WorkerBox, client: redis.Redis, admin: str, db: str) -> dict[str, list[int]]:
    """Who works during a drain: the worker's main process and children, the database's
    backends for this database, and redis-server."""
    with contextlib.closing(psycopg2.connect(admin)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (options(db)["dbname"],))
        backends = [int(row[0]) for row in cur.fetchall()]
    info: dict[str, Any] = client.info("server")
    pids = box.pids()
    return {
        "worker main process": pids[:1],
        "worker children": pids[1:],
        "postgres backends": backends,
        "redis-server": [int(info["process_id"])],
    }


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def naive_drain(broker: str, admin: str, n: int) -> Drain:
    """The same saves as one plain Celery task each (`bench/naive_worker.py`)."""
    with database(admin, "agentstore_naive") as db:
        PostgreSQLClient(postgres_connection_string=db).close()
        client = redis.Redis.from_url(broker)
        client.flushall()
        with WorkerBox("bench.naive_worker", _worker_env(broker, db)) as box:
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

                drain = _drain(box, done, every=0.02)
            peaks = box.peak_rss_mb()
        client.close()
    return Drain(n, fill, drain, peaks)


# -- publishing ------------------------------------------------------------------------------


def publish_latency(broker: str, n: int) -> dict[str, float]:
    """Durable `save_state` vs a raw redis-py LPUSH of the same message, interleaved."""
    raw = redis.Redis.from_url(broker)
    raw.flushall()
    op_id, text = encode_op("save_state", {"agent_id": "b", "state_id": "s", "state": state(0)})
    message = wire.build_message(op_id, [text])
    ours: list[float] = []
    lpush: list[float] = []
    with Producer(broker_url=broker) as prod:
        for i in range(n + 500):
            t0 = time.perf_counter_ns()
            raw.lpush("bench:raw", message)
            t1 = time.perf_counter_ns()
            prod.save_state("b", f"s{i % 100}", state(i))
            t2 = time.perf_counter_ns()
            if i >= 500:
                lpush.append((t1 - t0) / 1000)
                ours.append((t2 - t1) / 1000)
    raw.flushall()
    raw.close()
    return {
        "ours_p50_us": percentile(ours, 50),
        "ours_p99_us": percentile(ours, 99),
        "lpush_p50_us": percentile(lpush, 50),
        "lpush_p99_us": percentile(lpush, 99),
        "message_bytes": len(message),
    }


def buffered_calls(broker: str, n: int) -> dict[str, float]:
    """Buffered `save_state` in one thread: per-call latency and calls per second."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    samples: list[float] = []
    clock = time.perf_counter_ns
    with Producer(broker_url=broker, linger_ms=5) as prod:
        for i in range(1000):  # warm-up: the thread, the connection, the script
            prod.save_state("b", f"s{i}", state(i))
        prod.flush()
        started, cpu = time.perf_counter(), time.thread_time()
        for i in range(n):
            t0 = clock()
            prod.save_state("b", f"s{i % 1000}", state(i))
            samples.append(clock() - t0)
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
        prod.flush()
        flushed = time.perf_counter() - started
    client.flushall()
    client.close()
    return {
        "p50_us": percentile(samples, 50) / 1000,
        "p99_us": percentile(samples, 99) / 1000,
        "calls_per_s": n / wall,
        "calls_per_cpu_s": n / cpu,
        "published_per_s": n / flushed,
    }


# -- reads -----------------------------------------------------------------------------------


def reads(broker: str, admin: str, n: int) -> dict[str, float]:
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
        raw = psycopg2.connect(db)
        raw.autocommit = True
        cur = raw.cursor()
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
            prod.get_state(*key(0))  # opens the pool
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
        raw.close()
    return {
        "get_state_p50_us": statistics.median(ours_get) / 1000,
        "raw_get_p50_us": statistics.median(raw_get_ns) / 1000,
        "history_p50_ms": statistics.median(ours_hist) / 1e6,
        "raw_history_p50_ms": statistics.median(raw_hist) / 1e6,
    }


# -- Cosmos DB -------------------------------------------------------------------------------


def cosmos(n: int) -> dict[str, float]:
    """`CosmosDBClient.apply` of `n` states in 10 partitions vs an SDK `upsert_item` loop."""
    from azure.cosmos import CosmosClient, PartitionKey

    from storage.cosmos import LOOPBACK_TLS_WARNING, CosmosDBClient
    from tests.cosmos_server import start_cosmos_server

    server = start_cosmos_server()
    # The test server's certificate is self-signed on loopback, which the SDK accepts for
    # 127.0.0.1 only; urllib3 would warn about it on every request of the raw SDK loop.
    warnings.filterwarnings("ignore", message=LOOPBACK_TLS_WARNING)
    print(
        "   (Cosmos DB test server: self-signed certificate on 127.0.0.1, expected; "
        "urllib3's per-request warning is silenced)",
        file=sys.stderr,
    )
    try:
        ops = [
            make_op(
                "save_state",
                {"agent_id": f"agent-{i % 10}", "state_id": f"s{i}", "state": state(i)},
            )
            for i in range(n)
        ]
        items = [
            {
                "id": f"agent-{i % 10}|s{i}",
                "agent_id": f"agent-{i % 10}",
                "state_id": f"s{i}",
                "version": op.version,
                "position": op.version,
                "data": state(i),
            }
            for i, op in enumerate(ops)
        ]
        ours: list[float] = []
        raws: list[float] = []
        sdk = CosmosClient(server.endpoint, credential=server.key)
        for attempt in range(2):
            db = sdk.create_database_if_not_exists(f"raw{attempt}")
            container = db.create_container_if_not_exists("agent_states", PartitionKey("/agent_id"))
            started = time.perf_counter()
            for item in items:
                container.upsert_item(item)
            raws.append(n / (time.perf_counter() - started))
            client = CosmosDBClient(
                cosmos_endpoint=server.endpoint,
                cosmos_key=server.key,
                cosmos_database_name=f"ours{attempt}",
            )
            started = time.perf_counter()
            client.apply(ops)
            ours.append(n / (time.perf_counter() - started))
            client.close()
        sdk.close()
    finally:
        server.stop()
    return {"ours_per_s": max(ours), "raw_per_s": max(raws)}


# -- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def run(sizes: Sizes, admin: str, only: set[str] | None) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    raw: dict[str, Any] = {}

    def wanted(name: str) -> bool:
        return only is None or name in only

    def step(name: str) -> None:
        print(f"-- {name}", file=sys.stderr, flush=True)

    naive: Drain | None = None

    with redis_server() as broker:
        if wanted("e2e"):
            step(f"end to end: {sizes.saves:,} buffered saves vs raw execute_values")
            raws, ours = [], []
            for _ in range(sizes.rounds):
                raws.append(raw_upsert(admin, sizes.saves))
                ours.append(agentstore_drain(broker, admin, sizes.saves, 500))
            best = max(ours, key=lambda d: d.rate)
            raw["raw_upsert_rows_per_s"] = [round(r) for r in raws]
            raw["e2e_buffered"] = [
                {
                    "rate": d.rate,
                    "fill_s": d.fill_s,
                    "drain_s": d.drain_s,
                    "cpu_us_per_save": d.cpu_us_per_save,
                }
                for d in ours
            ]
            figures.append(
                Figure(
                    f"end-to-end drain, buffered producer, 2 worker processes, {sizes.saves:,} "
                    "saves",
                    best.rate,
                    "saves/s",
                    max(raws),
                    "raw execute_values upsert, seed DDL, pages of 1,000",
                    best.rate / max(raws),
                    ">= 0.75",
                    best.rate / max(raws) >= 0.75,
                    {
                        "fill_s": best.fill_s,
                        "publish_per_s": best.saves / best.fill_s,
                        "cpu_us_per_save": best.cpu_us_per_save,
                    },
                )
            )
            peak = max(best.peak_rss_mb.values())
            figures.append(
                Figure(
                    "worker RSS at peak (largest process)",
                    peak,
                    "MB",
                    target="<= 150 MB",
                    met=peak <= 150,
                    extra={"per_process": best.peak_rss_mb},
                )
            )
        if wanted("naive") or wanted("e2e") or wanted("unbuffered"):
            step(f"naive: {sizes.naive:,} one-task-per-save messages")
            naive = naive_drain(broker, admin, sizes.naive)
            raw["naive_per_s"] = naive.rate
            figures.append(
                Figure(
                    "naive drain: one Celery task per save, 2 worker processes",
                    naive.rate,
                    "saves/s",
                    extra={"per_process_peak_rss_mb": naive.peak_rss_mb},
                )
            )
        if wanted("e2e") and naive is not None:
            figures.append(
                Figure(
                    "end-to-end drain, buffered, vs naive Celery worker",
                    best.rate,
                    "saves/s",
                    naive.rate,
                    "naive: one Celery task per save (bench/naive_worker.py)",
                    best.rate / naive.rate,
                    ">= 10x",
                    best.rate / naive.rate >= 10,
                )
            )
        if (wanted("naive") or wanted("unbuffered")) and naive is not None:
            step(f"unbuffered: {sizes.unbuffered:,} single-save messages")
            single = agentstore_drain(broker, admin, sizes.unbuffered, None)
            raw["e2e_unbuffered"] = {"rate": single.rate, "fill_s": single.fill_s}
            figures.append(
                Figure(
                    f"end-to-end drain, single-save messages, {sizes.unbuffered:,} saves",
                    single.rate,
                    "saves/s",
                    naive.rate,
                    "naive: one Celery task per save",
                    single.rate / naive.rate,
                    ">= 2x",
                    single.rate / naive.rate >= 2,
                    {"durable_publish_per_s": single.saves / single.fill_s},
                )
            )
        if wanted("publish"):
            step("publish latency")
            pub = publish_latency(broker, sizes.publishes)
            raw["publish"] = pub
            ratio = pub["ours_p50_us"] / pub["lpush_p50_us"]
            figures.append(
                Figure(
                    "durable publish p50",
                    pub["ours_p50_us"],
                    "µs",
                    pub["lpush_p50_us"],
                    "raw redis-py LPUSH, same message",
                    ratio,
                    "<= 2x",
                    ratio <= 2,
                )
            )
            figures.append(
                Figure(
                    "durable publish p99",
                    pub["ours_p99_us"],
                    "µs",
                    pub["lpush_p99_us"],
                    "raw redis-py LPUSH, same message",
                    pub["ours_p99_us"] / pub["lpush_p99_us"],
                )
            )
            buf = buffered_calls(broker, sizes.buffered_calls)
            raw["buffered"] = buf
            figures.append(
                Figure(
                    "buffered save_state p50, one thread",
                    buf["p50_us"],
                    "µs",
                    target="<= 20 µs",
                    met=buf["p50_us"] <= 20,
                    extra=buf,
                )
            )
            figures.append(
                Figure(
                    "buffered save_state calls/s, one thread (wall clock)",
                    buf["calls_per_s"],
                    "calls/s",
                    target=">= 50,000",
                    met=buf["calls_per_s"] >= 50_000,
                    extra={"per_cpu_second": buf["calls_per_cpu_s"]},
                )
            )
        if wanted("reads"):
            step("reads")
            rd = reads(broker, admin, sizes.reads)
            raw["reads"] = rd
            r1 = rd["get_state_p50_us"] / rd["raw_get_p50_us"]
            r2 = rd["history_p50_ms"] / rd["raw_history_p50_ms"]
            figures.append(
                Figure(
                    "get_state p50",
                    rd["get_state_p50_us"],
                    "µs",
                    rd["raw_get_p50_us"],
                    "raw psycopg2 select",
                    r1,
                    "<= 1.3x",
                    r1 <= 1.3,
                )
            )
            figures.append(
                Figure(
                    "get_conversation_history p50, 1,000 messages",
                    rd["history_p50_ms"],
                    "ms",
                    rd["raw_history_p50_ms"],
                    "raw psycopg2 select",
                    r2,
                    "<= 1.5x",
                    r2 <= 1.5,
                )
            )
        if wanted("cosmos"):
            step(f"cosmos: {sizes.cosmos} records")
            cs = cosmos(sizes.cosmos)
            raw["cosmos"] = cs
            r = cs["ours_per_s"] / cs["raw_per_s"]
            figures.append(
                Figure(
                    f"Cosmos DB apply, {sizes.cosmos} states in 10 partitions",
                    cs["ours_per_s"],
                    "records/s",
                    cs["raw_per_s"],
                    "raw SDK upsert_item loop",
                    r,
                    ">= 1x",
                    r >= 1,
                )
            )
        if wanted("sweep"):
            step(f"sweep: {sizes.sweep:,} saves per batch size {SWEEP}")
            points = []
            for size in SWEEP:
                # Batch size = ops per transaction: the worker's AGENTSTORE_BATCH_MAX (with
                # messages no larger), and rows per page and commit for the raw baseline.
                d = agentstore_drain(
                    broker, admin, sizes.sweep, min(size, 500), AGENTSTORE_BATCH_MAX=str(size)
                )
                points.append(
                    {
                        "batch": size,
                        "agentstore_per_s": d.rate,
                        "raw_per_s": raw_upsert(admin, sizes.sweep, size),
                    }
                )
            raw["sweep"] = points
    return figures, raw


def table(figures: list[Figure]) -> str:
    lines = [
        "| figure | agentstore | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        base = f"{f.baseline:,.1f} {f.unit} ({f.baseline_name})" if f.baseline is not None else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        lines.append(
            f"| {f.name} | {f.value:,.1f} {f.unit} | {base} | {ratio} | {f.target or '-'} | {met} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, float]], path: Path) -> bool:
    """Throughput vs batch size as a PNG; False if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [p["batch"] for p in points]
    ax.plot(
        sizes,
        [p["agentstore_per_s"] for p in points],
        "o-",
        label="agentstore drain (AGENTSTORE_BATCH_MAX)",
    )
    ax.plot(
        sizes,
        [p["raw_per_s"] for p in points],
        "s--",
        label="raw execute_values (rows per page and commit)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("batch size (ops or rows per transaction)")
    ax.set_ylabel("saves (rows) per second")
    ax.set_title("Throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL URL allowed to create and drop databases",
    )
    parser.add_argument(
        "--only", help="comma-separated: e2e,naive,unbuffered,publish,reads,cosmos,sweep"
    )
    opts = parser.parse_args()
    sizes = QUICK if opts.quick else FULL
    only = set(opts.only.split(",")) if opts.only else None
    started = time.monotonic()
    info = machine()
    figures, raw = run(sizes, opts.pg, only)
    info["load_avg_at_end"] = os.getloadavg()
    elapsed = time.monotonic() - started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["python", "-m", "bench.run", *sys.argv[1:]])
    result = {
        "command": command,
        "mode": "quick" if opts.quick else "full",
        "sizes": sizes.__dict__,
        "machine": info,
        "seconds": elapsed,
        "figures": [f.__dict__ for f in figures],
        "raw": raw,
    }
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    plotted = "sweep" in raw and plot(raw["sweep"], RESULTS / f"{stamp}.png")
    print(table(figures))
    for f in figures:
        if "cpu_us_per_save" in f.extra:
            cpu = f.extra["cpu_us_per_save"]
            parts = ", ".join(f"{name} {us:.1f}" for name, us in cpu.items())
            print(
                f"\nCPU per save during the buffered drain (µs): {parts}; "
                f"total {sum(cpu.values()):.1f}"
            )
    print(
        f"\n{command}: {elapsed:.0f} s on {info['nproc']} cores ({info['cpu']}); "
        f"load average {info['load_avg_at_start'][0]:.1f} -> {info['load_avg_at_end'][0]:.1f}"
    )
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if plotted else ""))
    if "sweep" in raw and not plotted:
        print("no plot: matplotlib is not installed (pip install matplotlib)")


if __name__ == "__main__":
    main()
