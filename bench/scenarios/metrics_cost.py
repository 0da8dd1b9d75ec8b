"""What Prometheus metrics cost: the same drain and the same durable publish, on vs off."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry

from agentstore_cli.launch import free_port
from producer import Producer

from ..report import slowdown
from .context import Context
from .drain import Drain, agentstore_drain, cost_figures
from .workload import COST_ROUNDS, alternating_p50_us, state


def publish_cost(broker: str, n: int) -> dict[str, float]:
    """Durable `save_state` latency, blocks of saves through a producer without metrics and
    one with (into a registry of its own) in turn."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    with (
        Producer(broker_url=broker, metrics=False) as plain,
        Producer(broker_url=broker, metrics=CollectorRegistry()) as counted,
    ):
        counted.save_state("b", "warm-up", state(0))  # its connection, its script

        def save(on: bool, i: int) -> None:
            (counted if on else plain).save_state("b", f"s{i % 100}", state(i))

        p50 = alternating_p50_us(save, n)
    client.flushall()
    client.close()
    return p50


def metrics_cost(ctx: Context) -> None:
    """Drain of single-save messages and durable publish latency, metrics off vs on,
    alternated in one run (see `cost_figures`; the best p50 of each publish run)."""
    n = ctx.sizes.unbuffered
    ctx.step(f"metrics cost: {n:,}-save drains and durable publishes, metrics off vs on")
    off: list[Drain] = []
    on: list[Drain] = []
    for _ in range(max(ctx.sizes.rounds, COST_ROUNDS)):
        off.append(agentstore_drain(ctx.broker, ctx.admin, n, None))
        port = str(free_port())
        on.append(
            agentstore_drain(ctx.broker, ctx.admin, n, None, env={"AGENTSTORE_METRICS_PORT": port})
        )
    pub = [publish_cost(ctx.broker, ctx.sizes.publishes) for _ in range(3)]
    pub_off = [p["off_p50_us"] for p in pub]
    pub_on = [p["on_p50_us"] for p in pub]
    figures = cost_figures(
        f"drain of {n:,} single-save messages, metrics on",
        off,
        on,
        "metrics off, same run (best of each)",
    )
    ctx.results.raw["metrics_cost"] = {
        **figures[0].extra,
        "publish_off_p50_us": pub_off,
        "publish_on_p50_us": pub_on,
    }
    figures.append(
        slowdown(
            "durable save_state p50, Producer(metrics=...)",
            min(pub_on),
            "µs",
            min(pub_off),
            "no producer metrics, same run (best p50 of each)",
            rate=False,
            runs={"on": pub_on, "off": pub_off},
        )
    )
    ctx.results.figures += figures
