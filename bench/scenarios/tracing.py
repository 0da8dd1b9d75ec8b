"""What tracing costs: a durable publish and a drain with an SDK recording every span
(tests/tracing.py in this process, tests/otel_site in the worker's) vs no tracer provider,
in the same run; and the one check a save pays while no provider is configured."""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import redis

from broker import tracing
from producer import Producer
from tests.tracing import recording

from ..report import Figure, slowdown
from .context import Context
from .drain import Drain, agentstore_drain, cost_figures
from .workload import COST_ROUNDS, alternating_p50_us, state

SITE = Path(__file__).resolve().parents[2] / "tests" / "otel_site"


def publish_cost(broker: str, n: int) -> dict[str, float]:
    """Durable `save_state` latency, blocks of saves traced and untraced in turn."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    with Producer(broker_url=broker) as prod:

        def save(_: bool, i: int) -> None:
            prod.save_state("b", f"s{i % 100}", state(i))

        p50 = alternating_p50_us(
            save, n, lambda on: recording() if on else contextlib.nullcontext()
        )
    client.flushall()
    client.close()
    return p50


def off_check_ns(n: int = 200_000) -> float:
    """What a save pays for tracing while no provider is configured, best of 5 runs."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with tracing.save_span("save_state"):
                pass
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def drain_cost(ctx: Context, n: int) -> dict[str, list[Drain]]:
    """Drains of buffered saves (500 per message), untraced and traced in turn."""
    drains: dict[str, list[Drain]] = {"off": [], "on": []}
    for _ in range(max(ctx.sizes.rounds, COST_ROUNDS)):
        drains["off"].append(agentstore_drain(ctx.broker, ctx.admin, n, 500))
        with tempfile.TemporaryDirectory() as spans, recording():
            env = {"PYTHONPATH": str(SITE), "AGENTSTORE_TEST_SPANS_DIR": spans}
            drains["on"].append(agentstore_drain(ctx.broker, ctx.admin, n, 500, env=env))
    return drains


def tracing_cost(ctx: Context) -> None:
    ctx.step("tracing: durable publish and drain, on vs off")
    pub = publish_cost(ctx.broker, ctx.sizes.publishes)
    check = off_check_ns()
    drain = drain_cost(ctx, ctx.sizes.unbuffered)
    drained = cost_figures(
        f"drain, buffered, {ctx.sizes.unbuffered:,} saves, tracing on (producer and worker)",
        drain["off"],
        drain["on"],
        "no tracer provider, same run (best of each)",
    )
    ctx.results.raw["tracing"] = {**pub, "off_check_ns": check, "drain": drained[0].extra}
    figures = ctx.results.figures
    figures.append(
        slowdown(
            "durable publish p50, tracing on (SDK, every span recorded)",
            pub["on_p50_us"],
            "µs",
            pub["off_p50_us"],
            "no tracer provider, same run (blocks interleaved)",
            rate=False,
        )
    )
    share = check / 1000 / pub["off_p50_us"]
    figures.append(
        Figure(
            "tracing off: what a save pays for it",
            check,
            "ns",
            pub["off_p50_us"] * 1000,
            "durable publish p50, no provider",
            share,
            "<= 1% of a durable publish",
            share <= 0.01,
        )
    )
    figures += drained
