"""LangGraph checkpointers under concurrent graphs: AgentStoreSaver (workers on this box) vs
LangGraph's AsyncPostgresSaver on the same PostgreSQL (one connection, and a pool: the
better is the baseline) vs InMemorySaver (the ceiling), durability "sync". At the largest
concurrency the checkpointers take turns, several rounds, so the machine's drift does not
fall on one of them."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypedDict

import redis
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agentstore_langgraph import AgentStoreSaver
from storage import PostgreSQLClient
from storage.config import load_settings

from ..report import Figure
from ..services import WorkerBox, database
from .context import Context
from .drain import database_backends, redis_server_pid, worker_env
from .workload import cpu_seconds, percentile

CONCURRENCY = (1, 16, 64)
SUPERSTEPS = 10
POOL_SIZE = 16
READ_SAMPLES = 300


class State(TypedDict):
    count: int
    notes: str


def build(saver: BaseCheckpointSaver[Any]) -> Any:
    """Two nodes in a loop, each superstep one node: 10 supersteps a run."""

    def step(state: State) -> dict[str, Any]:
        return {"count": state["count"] + 1, "notes": f"step {state['count']} " + "x" * 200}

    builder = StateGraph(State)
    builder.add_node("a", step)
    builder.add_node("b", step)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_conditional_edges("b", lambda s: "a" if s["count"] < SUPERSTEPS else END)
    return builder.compile(checkpointer=saver)


@dataclass
class Measured:
    supersteps_per_s: float
    p50_ms: float
    p99_ms: float
    read_p50_ms: float | None = None  # aget_tuple of a finished thread
    # CPU per superstep: this process's (LangGraph and the checkpointer's client side), the
    # workers', and the servers' (the database's PostgreSQL backends, redis-server). Steadier
    # than the rates on a shared machine, and with the box's two cores busy (workers and
    # servers run beside the graphs) what the rates follow.
    client_cpu_us: float = 0.0
    workers_cpu_us: float = 0.0
    servers_cpu_us: float = 0.0


async def run_graphs(
    saver: BaseCheckpointSaver[Any],
    n: int,
    runs: int,
    tag: str,
    workers: WorkerBox | None = None,
    servers: Callable[[], list[int]] | None = None,
) -> Measured:
    """`n` tasks, each running its share of `runs` graphs one after another, each on its own
    thread; a superstep's latency is the time between two of its run's streamed updates."""
    graph = build(saver)
    latencies: list[float] = []

    async def task(t: int) -> None:
        for r in range(max(1, runs // n)):
            config = {"configurable": {"thread_id": f"{tag}-{t}-{r}"}}
            last = time.perf_counter()
            async for _ in graph.astream(
                {"count": 0, "notes": ""}, config, durability="sync", stream_mode="updates"
            ):
                now = time.perf_counter()
                latencies.append(now - last)
                last = now

    pids = workers.pids() if workers is not None else []
    before = _cpu_by_pid(servers() if servers else [])
    cpu, workers_cpu = time.process_time(), cpu_seconds(pids)
    started = time.perf_counter()
    await asyncio.gather(*(task(t) for t in range(n)))
    elapsed = time.perf_counter() - started
    cpu, workers_cpu = time.process_time() - cpu, cpu_seconds(pids) - workers_cpu
    # A backend a pool opened during the run counts from its start; one gone by the time its
    # CPU is read counts 0, never less.
    after = _cpu_by_pid(servers() if servers else [])
    servers_cpu = sum(max(0.0, spent - before.get(pid, 0.0)) for pid, spent in after.items())
    steps = len(latencies)
    assert steps == n * max(1, runs // n) * SUPERSTEPS, steps
    return Measured(
        steps / elapsed,
        statistics.median(latencies) * 1000,
        percentile(latencies, 99) * 1000,
        client_cpu_us=cpu / steps * 1e6,
        workers_cpu_us=workers_cpu / steps * 1e6,
        servers_cpu_us=servers_cpu / steps * 1e6,
    )


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


async def read_samples(
    saver: BaseCheckpointSaver[Any], threads: list[str], count: int
) -> list[float]:
    """`count` timings of `aget_tuple` for the latest checkpoint of finished threads, in s."""
    configs = [{"configurable": {"thread_id": t}} for t in threads]
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await saver.aget_tuple(configs[i % len(configs)])  # type: ignore[arg-type]
        samples.append(time.perf_counter() - started)
    return samples


@dataclass
class Contender:
    """A checkpointer to measure, with the processes whose CPU counts beside its own."""

    name: str
    make: Callable[[], contextlib.AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]
    workers: WorkerBox | None = None
    servers: Callable[[], list[int]] | None = None


def in_turn(contenders: list[Contender], round_: int) -> list[Contender]:
    """The order of a round: reversed every other round, so no one always goes first."""
    return contenders if round_ % 2 == 0 else contenders[::-1]


async def settle_reads(saver: BaseCheckpointSaver[Any], threads: list[str]) -> None:
    """Read every thread once, untimed: AgentStoreSaver's own writes to them applied first."""
    for thread in threads:
        config = {"configurable": {"thread_id": thread}}
        assert await saver.aget_tuple(config) is not None  # type: ignore[arg-type]


def median_of(rounds: list[Measured]) -> Measured:
    """Each figure's median over the rounds."""
    return Measured(
        statistics.median(m.supersteps_per_s for m in rounds),
        statistics.median(m.p50_ms for m in rounds),
        statistics.median(m.p99_ms for m in rounds),
        client_cpu_us=statistics.median(m.client_cpu_us for m in rounds),
        workers_cpu_us=statistics.median(m.workers_cpu_us for m in rounds),
        servers_cpu_us=statistics.median(m.servers_cpu_us for m in rounds),
    )


async def measure(
    contenders: list[Contender], runs: int, rounds: int
) -> tuple[dict[str, dict[int, Measured]], dict[str, list[Measured]]]:
    """Every contender at each concurrency; at the largest, `rounds` runs each, taking turns
    (the order reversed every other round), and the median of each figure: a machine whose
    speed drifts weighs on each alike. Its `aget_tuple` reads take turns the same way."""
    found: dict[str, dict[int, Measured]] = {c.name: {} for c in contenders}
    n = CONCURRENCY[-1]
    turns: dict[str, list[Measured]] = {c.name: [] for c in contenders}
    async with contextlib.AsyncExitStack() as stack:
        savers = {c.name: await stack.enter_async_context(c.make()) for c in contenders}
        for c in contenders:
            # Connections, prepared statements, the script; then the smaller concurrencies.
            await run_graphs(savers[c.name], 4, 8, "warm")
            for small in CONCURRENCY[:-1]:
                found[c.name][small] = await run_graphs(
                    savers[c.name], small, runs, f"n{small}", c.workers, c.servers
                )
        for r in range(rounds):
            for c in in_turn(contenders, r):
                turns[c.name].append(
                    await run_graphs(savers[c.name], n, runs, f"n{n}r{r}", c.workers, c.servers)
                )
        threads = [f"n{n}r0-{t}-0" for t in range(n)]
        for c in contenders:
            await settle_reads(savers[c.name], threads)
        reads: dict[str, list[float]] = {c.name: [] for c in contenders}
        for r in range(rounds):
            for c in in_turn(contenders, r):
                reads[c.name] += await read_samples(savers[c.name], threads, READ_SAMPLES)
    for c in contenders:
        found[c.name][n] = median_of(turns[c.name])
        found[c.name][n].read_p50_ms = statistics.median(reads[c.name]) * 1000
    return found, turns


@contextlib.asynccontextmanager
async def in_memory() -> AsyncIterator[BaseCheckpointSaver[Any]]:
    yield InMemorySaver()


def postgres_saver(
    url: str, pooled: bool
) -> Callable[[], contextlib.AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]:
    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        if not pooled:
            async with AsyncPostgresSaver.from_conn_string(url) as saver:
                await saver.setup()
                yield saver
            return
        # The settings LangGraph's documentation gives for a pool.
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool(url, max_size=POOL_SIZE, kwargs=kwargs) as pool:
            saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
            await saver.setup()
            yield saver

    return make


def agentstore_saver(
    broker: str, url: str
) -> Callable[[], contextlib.AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]:
    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        settings = load_settings(celery_broker_url=broker, postgres_connection_string=url)
        async with AgentStoreSaver(settings) as saver:
            yield saver

    return make


def compare(
    broker: str, admin: str, runs: int, rounds: int
) -> tuple[dict[str, dict[int, Measured]], dict[str, list[Measured]]]:
    with contextlib.ExitStack() as stack:
        contenders = [Contender("InMemorySaver", in_memory)]
        for pooled in (False, True):
            url = stack.enter_context(database(admin, "agentstore_lg"))
            contenders.append(
                Contender(
                    f"AsyncPostgresSaver, {'pool of 16' if pooled else 'one connection'}",
                    postgres_saver(url, pooled),
                    servers=partial(database_backends, admin, url),
                )
            )
        url = stack.enter_context(database(admin, "agentstore_lg"))
        client = stack.enter_context(redis.Redis.from_url(broker))
        PostgreSQLClient(postgres_connection_string=url).close()  # schema before the clock
        redis_pid = redis_server_pid(client)
        box = stack.enter_context(WorkerBox("worker", worker_env(broker, url)))
        box.wait_ready()

        def servers() -> list[int]:
            return [*database_backends(admin, url), redis_pid]

        contenders.append(Contender("AgentStoreSaver", agentstore_saver(broker, url), box, servers))
        return asyncio.run(measure(contenders, runs, rounds))


def checkpointers(ctx: Context) -> None:
    n = CONCURRENCY[-1]
    rounds = ctx.sizes.rounds
    ctx.step(
        f"langgraph: 2-node loop of {SUPERSTEPS} supersteps, {CONCURRENCY} concurrent runs, "
        f"at {n} the median of {rounds} rounds taking turns"
    )
    found, turns = compare(ctx.broker, ctx.admin, ctx.sizes.graph_runs, rounds)
    ctx.results.raw["langgraph"] = {
        name: {str(k): vars(m) for k, m in by_n.items()} for name, by_n in found.items()
    }
    ctx.results.raw["langgraph_rounds"] = {
        name: [vars(m) for m in measured] for name, measured in turns.items()
    }
    ours = found["AgentStoreSaver"][n]
    base_name, base = max(
        ((k, v[n]) for k, v in found.items() if k.startswith("AsyncPostgresSaver")),
        key=lambda kv: kv[1].supersteps_per_s,
    )
    ceiling = found["InMemorySaver"][n].supersteps_per_s
    rate = ours.supersteps_per_s / base.supersteps_per_s
    p50 = ours.p50_ms / base.p50_ms
    assert ours.read_p50_ms is not None and base.read_p50_ms is not None
    read = ours.read_p50_ms / base.read_p50_ms
    figures = ctx.results.figures
    figures.append(
        Figure(
            f"LangGraph supersteps/s, {n} concurrent runs, durability sync",
            ours.supersteps_per_s,
            "supersteps/s",
            base.supersteps_per_s,
            base_name,
            rate,
            ">= 2x",
            rate >= 2,
            {
                "in_memory_ceiling": ceiling,
                "p99_ms": ours.p99_ms,
                "base_p99_ms": base.p99_ms,
                "cpu_us_per_step": {
                    "client": ours.client_cpu_us,
                    "workers": ours.workers_cpu_us,
                    "servers": ours.servers_cpu_us,
                },
                "base_cpu_us_per_step": base.client_cpu_us,
                "baseline_cpu_us_per_step": {
                    "client": base.client_cpu_us,
                    "servers": base.servers_cpu_us,
                },
                "in_memory_cpu_us_per_step": found["InMemorySaver"][n].client_cpu_us,
            },
        )
    )
    figures.append(
        Figure(
            f"LangGraph superstep latency p50, {n} concurrent runs",
            ours.p50_ms,
            "ms",
            base.p50_ms,
            base_name,
            p50,
            "<= 0.5x",
            p50 <= 0.5,
        )
    )
    figures.append(
        Figure(
            "LangGraph aget_tuple p50, latest checkpoint",
            ours.read_p50_ms,
            "ms",
            base.read_p50_ms,
            base_name,
            read,
            "<= 1.3x",
            read <= 1.3,
        )
    )
