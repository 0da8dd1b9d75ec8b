"""Publishing: durable `save_state` vs a raw LPUSH, and buffered calls in one thread."""

from __future__ import annotations

import time

import redis

from broker import wire
from producer import Producer
from storage.ops import encode_op

from ..report import Figure
from .context import Context
from .workload import percentile, state


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


def publish(ctx: Context) -> None:
    ctx.step("publish latency")
    pub = publish_latency(ctx.broker, ctx.sizes.publishes)
    ctx.results.raw["publish"] = pub
    figures = ctx.results.figures
    ratio = pub["ours_p50_us"] / pub["lpush_p50_us"]
    figures.append(
        Figure(
            "durable publish p50",
            pub["ours_p50_us"],
            "µs",
            pub["lpush_p50_us"],
            "raw redis-py LPUSH, same message",
            ratio,
            "<= 1.2x",
            ratio <= 1.2,
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
    buf = buffered_calls(ctx.broker, ctx.sizes.buffered_calls)
    ctx.results.raw["buffered"] = buf
    figures.append(
        Figure(
            "buffered save_state p50, one thread",
            buf["p50_us"],
            "µs",
            target="<= 10 µs",
            met=buf["p50_us"] <= 10,
            extra=buf,
        )
    )
    figures.append(
        Figure(
            "buffered save_state calls/s, one thread (wall clock)",
            buf["calls_per_s"],
            "calls/s",
            target=">= 100,000",
            met=buf["calls_per_s"] >= 100_000,
            extra={"per_cpu_second": buf["calls_per_cpu_s"]},
        )
    )
