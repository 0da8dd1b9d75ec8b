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

from ..report import Figure
from .context import Context
from .drain import agentstore_drain
from .workload import percentile, state

SITE = Path(__file__).resolve().parents[2] / "tests" / "otel_site"
BLOCK = 500


def publish_cost(broker: str, n: int) -> dict[str, float]:
    """Durable `save_state` latency, blocks of `BLOCK` saves traced and untraced in turn."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    off: list[float] = []
    on: list[float] = []
    with Producer(broker_url=broker) as prod:
        for i in range(BLOCK):  # warm-up: the connection, the script
            prod.save_state("b", f"s{i % 100}", state(i))
        for block in range(2 * max(1, n // BLOCK)):
            traced = block % 2 == 1
            samples = on if traced else off
            with recording() if traced else contextlib.nullcontext():
                for i in range(BLOCK):
                    t0 = time.perf_counter_ns()
                    prod.save_state("b", f"s{i % 100}", state(i))
                    samples.append((time.perf_counter_ns() - t0) / 1000)
    client.flushall()
    client.close()
    return {"off_p50_us": percentile(off, 50), "on_p50_us": percentile(on, 50)}


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


def drain_cost(ctx: Context, n: int) -> dict[str, list[float]]:
    """Drain rates of buffered saves (500 per message), untraced and traced in turn."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(ctx.sizes.rounds):
        rates["off"].append(agentstore_drain(ctx.broker, ctx.admin, n, 500).rate)
        with tempfile.TemporaryDirectory() as spans, recording():
            env = {"PYTHONPATH": str(SITE), "AGENTSTORE_TEST_SPANS_DIR": spans}
            rates["on"].append(agentstore_drain(ctx.broker, ctx.admin, n, 500, env=env).rate)
    return rates


def tracing_cost(ctx: Context) -> None:
    ctx.step("tracing: durable publish and drain, on vs off")
    pub = publish_cost(ctx.broker, ctx.sizes.publishes)
    check = off_check_ns()
    drain = drain_cost(ctx, ctx.sizes.unbuffered)
    ctx.results.raw["tracing"] = {**pub, "off_check_ns": check, "drain_rates": drain}
    figures = ctx.results.figures
    ratio = pub["on_p50_us"] / pub["off_p50_us"]
    figures.append(
        Figure(
            "durable publish p50, tracing on (SDK, every span recorded)",
            pub["on_p50_us"],
            "µs",
            pub["off_p50_us"],
            "no tracer provider, same run",
            ratio,
            "<= 1.05x",
            ratio <= 1.05,
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
    on, off = max(drain["on"]), max(drain["off"])
    figures.append(
        Figure(
            f"drain, buffered, {ctx.sizes.unbuffered:,} saves, tracing on (producer and worker)",
            on,
            "saves/s",
            off,
            "no tracer provider, same run",
            on / off,
            ">= 0.95",
            on / off >= 0.95,
        )
    )
