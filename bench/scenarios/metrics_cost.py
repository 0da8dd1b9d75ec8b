"""What Prometheus metrics cost: the same drain and the same durable publish, on vs off."""

from __future__ import annotations

import time

import redis
from prometheus_client import CollectorRegistry

from agentstore_cli.launch import free_port
from producer import Producer

from ..report import Figure
from .context import Context
from .drain import agentstore_drain
from .workload import percentile, state


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
    alternated in one run (best of `rounds` drains, median of each publish run)."""
    n = ctx.sizes.unbuffered
    ctx.step(f"metrics cost: {n:,}-save drains and durable publishes, metrics off vs on")
    off: list[float] = []
    on: list[float] = []
    for _ in range(max(ctx.sizes.rounds, 2)):
        off.append(agentstore_drain(ctx.broker, ctx.admin, n, None).rate)
        port = str(free_port())
        on.append(
            agentstore_drain(
                ctx.broker, ctx.admin, n, None, env={"AGENTSTORE_METRICS_PORT": port}
            ).rate
        )
    pub_off: list[float] = []
    pub_on: list[float] = []
    for _ in range(3):  # alternated, so a change in the machine's load hits both alike
        pub_off.append(_publish_p50_us(ctx.broker, ctx.sizes.publishes, False))
        pub_on.append(_publish_p50_us(ctx.broker, ctx.sizes.publishes, True))
    ctx.results.raw["metrics_cost"] = {
        "drain_off_per_s": off,
        "drain_on_per_s": on,
        "publish_off_p50_us": pub_off,
        "publish_on_p50_us": pub_on,
    }
    drain_cost = 1 - max(on) / max(off)
    ctx.results.figures.append(
        Figure(
            "drain of single-save messages with metrics on",
            max(on),
            "saves/s",
            max(off),
            "the same drain with metrics off",
            max(on) / max(off),
            "cost <= 5%",
            drain_cost <= 0.05,
        )
    )
    publish_cost = min(pub_on) / min(pub_off) - 1
    ctx.results.figures.append(
        Figure(
            "durable save_state p50 with Producer(metrics=...)",
            min(pub_on),
            "us",
            min(pub_off),
            "the same publish without metrics",
            min(pub_off) / min(pub_on),
            "cost <= 5%",
            publish_cost <= 0.05,
        )
    )
