"""What Prometheus metrics cost: the same drain and the same durable publish, on vs off."""

from __future__ import annotations

import time

import redis
from prometheus_client import CollectorRegistry

from agentstore_cli.launch import free_port
from producer import Producer

from ..report import slowdown
from .context import Context
from .drain import Drain, agentstore_drain, cost_figures
from .workload import COST_ROUNDS, percentile, state


def _publish_p50_us(broker: str, n: int, metrics: bool) -> float:
    """Median durable `save_state` latency; with `metrics`, into a registry of its own."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    samples: list[float] = []
    with Producer(broker_url=broker, metrics=CollectorRegistry() if metrics else False) as prod:
        for i in range(n + 500):
            t0 = time.perf_counter_ns()
            prod.save_state("b", f"s{i % 100}", state(i))
            if i >= 500:  # warm-up: the connection, the script
                samples.append((time.perf_counter_ns() - t0) / 1000)
    client.flushall()
    client.close()
    return percentile(samples, 50)


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
        on.append(agentstore_drain(ctx.broker, ctx.admin, n, None, AGENTSTORE_METRICS_PORT=port))
    pub_off: list[float] = []
    pub_on: list[float] = []
    for _ in range(3):  # alternated, so a change in the machine's load hits both alike
        pub_off.append(_publish_p50_us(ctx.broker, ctx.sizes.publishes, False))
        pub_on.append(_publish_p50_us(ctx.broker, ctx.sizes.publishes, True))
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
