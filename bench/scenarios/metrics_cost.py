"""What Prometheus metrics cost: the same drain and the same durable publish, on vs off,
alternated in one run (`bench.scenarios.cost`)."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry

from agentstore_cli.launch import free_port
from producer import Producer

from .context import Context
from .cost import Alternated, alternate, drain_figures, pair_order, publish_figures
from .drain import Drain, agentstore_drain
from .workload import COST_ROUNDS, state


def publish_cost(broker: str, n: int) -> Alternated:
    """Durable `save_state` calls, blocks of them through a producer without metrics and
    one with (into a registry of its own) in turn."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    with (
        Producer(broker_url=broker, metrics=False) as plain,
        Producer(broker_url=broker, metrics=CollectorRegistry()) as counted,
    ):

        def save(on: bool, i: int) -> None:
            (counted if on else plain).save_state("b", f"s{i % 100}", state(i))

        found = alternate(save, n)
    client.flushall()
    client.close()
    return found


def metrics_cost(ctx: Context) -> None:
    """Drains of single-save messages and durable publishes, metrics off vs on."""
    n = ctx.sizes.unbuffered
    ctx.step(f"metrics cost: {n:,}-save drains and durable publishes, metrics off vs on")
    drains: dict[bool, list[Drain]] = {False: [], True: []}
    for index in range(max(ctx.sizes.rounds, COST_ROUNDS)):
        for on in pair_order(index):
            env = {"AGENTSTORE_METRICS_PORT": str(free_port())} if on else None
            drains[on].append(agentstore_drain(ctx.broker, ctx.admin, n, None, env=env))
    pub = [publish_cost(ctx.broker, ctx.sizes.publishes) for _ in range(3)]
    figures = drain_figures(
        f"drain of {n:,} single-save messages, metrics on (worker)",
        drains[False],
        drains[True],
        "metrics off, same run",
        producer=False,
    )
    figures += publish_figures(
        "durable save_state, Producer(metrics=...)", pub, "no producer metrics, same run"
    )
    ctx.results.raw["metrics_cost"] = {
        "drain": [f.extra for f in figures[:2]],
        "publish_cpu_us": [p.cpu_us for p in pub],
        "publish_p50_us": [p.p50_us for p in pub],
    }
    ctx.results.figures += figures
