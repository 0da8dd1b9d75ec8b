"""What tracing costs: a durable publish and a drain with a production-like SDK (a
BatchSpanProcessor in front of an exporter that drops the spans after counting them:
`tests.tracing.production_like`) in this process and the worker's (tests/otel_site) vs no
tracer provider, alternated in one run; the SDK's own bare span beside them; and the one
check a save pays while no provider is configured.

Dropping at the exporter keeps what a collector's network and serialisation would cost
(which depends on the collector, and runs on the BatchSpanProcessor's thread) out of the
figure, and keeps everything the code and the SDK do per span in it: sampling, ids, the
span and its links, the processor's queue. Every span is sampled."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from broker import tracing
from producer import Producer
from tests.tracing import CountingExporter, counted, installed, production_like

from ..report import Figure
from .context import Context
from .cost import Alternated, alternate, drain_figures, pair_order, paired, publish_figures
from .drain import Drain, agentstore_drain
from .workload import COST_ROUNDS, state

SITE = Path(__file__).resolve().parents[2] / "tests" / "otel_site"
ON = "tracing on (SDK: BatchSpanProcessor, dropping exporter)"
OFF = "no tracer provider, same run"


def publish_cost(broker: str, n: int, provider: TracerProvider) -> Alternated:
    """Durable `save_state` calls, blocks of them traced and untraced in turn."""
    client = redis.Redis.from_url(broker)
    client.flushall()
    with Producer(broker_url=broker) as prod:

        def save(_: bool, i: int) -> None:
            prod.save_state("b", f"s{i % 100}", state(i))

        found = alternate(
            save, n, lambda on: installed(provider) if on else contextlib.nullcontext()
        )
    client.flushall()
    client.close()
    return found


def span_cpu_us(
    provider: TracerProvider, rounds: int = 6, n: int = 2_000
) -> dict[str, list[float]]:
    """CPU per span, in alternating rounds: the SDK's bare span (started and ended, no
    attributes, links or context: what no instrumentation can save), our save span (current
    while the block runs, its carrier injected), and our batch span per save it links (500
    saves' carriers); `n` spans a round, fewer than the processor's queue holds."""
    tracer = provider.get_tracer("bench")
    carriers = []
    with installed(provider):
        for _ in range(500):
            with tracing.save_span("save_state") as carrier:
                assert carrier is not None
                carriers.append(carrier)

    def bare() -> None:
        tracer.start_span("agentstore.save_state", kind=SpanKind.PRODUCER).end()

    def ours() -> None:
        with tracing.save_span("save_state"):
            pass

    def batch() -> None:
        with tracing.batch_span(carriers, ops=500, messages=1):
            pass

    found: dict[str, list[float]] = {"bare": [], "save": [], "batch_per_link": []}
    with installed(provider):
        for _ in range(rounds):
            for name, make, count, per in (
                ("bare", bare, n, 1),
                ("save", ours, n, 1),
                ("batch_per_link", batch, n // 500, 500),
            ):
                started = time.process_time()
                for _ in range(count):
                    make()
                found[name].append((time.process_time() - started) / count / per * 1e6)
                # Its processor's queue (2,048 spans) drained between rounds: a full one
                # drops spans, which would cost less than exporting them.
                provider.force_flush()
    return found


def off_check_ns(n: int = 200_000) -> float:
    """CPU a save pays for tracing while no provider is configured, best of 5 runs."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time_ns()
        for _ in range(n):
            with tracing.save_span("save_state"):
                pass
        best = min(best, (time.process_time_ns() - started) / n)
    return best


def _linked(directory: Path, n: int, timeout: float = 20.0) -> None:
    """Wait until the worker's processes exported batch spans linking all `n` saves."""
    deadline = time.monotonic() + timeout
    while counted(directory)[1] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker's spans link {counted(directory)[1]} of {n} saves")
        time.sleep(0.1)


def drain_cost(
    ctx: Context, n: int, provider: TracerProvider, exporter: CountingExporter
) -> dict[bool, list[Drain]]:
    """Drains of buffered saves (500 per message), untraced and traced in turn; a traced
    one must show a span per save in this process and every save linked in the worker."""
    drains: dict[bool, list[Drain]] = {False: [], True: []}
    for index in range(max(ctx.sizes.rounds, COST_ROUNDS)):
        for on in pair_order(index):
            if not on:
                drains[on].append(agentstore_drain(ctx.broker, ctx.admin, n, 500))
                continue
            before = exporter.spans
            with tempfile.TemporaryDirectory() as spans, installed(provider):
                env = {
                    "PYTHONPATH": str(SITE),
                    "AGENTSTORE_TEST_SPAN_COUNTS_DIR": spans,
                    # Exported (dropped) twice a second instead of every 5 s, so the check
                    # after the drain need not wait long; a few more tiny exports per drain.
                    "OTEL_BSP_SCHEDULE_DELAY": "500",
                }
                check = lambda: _linked(Path(spans), n)  # noqa: E731
                drains[on].append(
                    agentstore_drain(ctx.broker, ctx.admin, n, 500, env=env, after=check)
                )
            provider.force_flush()
            if exporter.spans - before != n:
                raise RuntimeError(f"{exporter.spans - before} save spans for {n} saves")
    return drains


def tracing_cost(ctx: Context) -> None:
    ctx.step("tracing: durable publish and drain, on vs off")
    exporter = CountingExporter()
    provider = production_like(exporter)
    try:
        pub = publish_cost(ctx.broker, ctx.sizes.publishes, provider)
        spans = span_cpu_us(provider)
        check = off_check_ns()
        drain = drain_cost(ctx, ctx.sizes.unbuffered, provider, exporter)
    finally:
        provider.shutdown()
    bare = statistics.median(spans["bare"])
    publish = publish_figures(f"durable publish, {ON}", [pub], OFF)
    p50_off = publish[1].baseline or 0.0
    drained = drain_figures(
        f"drain, buffered, {ctx.sizes.unbuffered:,} saves, {ON} in producer and worker",
        drain[False],
        drain[True],
        OFF,
        producer=True,
    )
    ctx.results.raw["tracing"] = {
        "publish_cpu_us": pub.cpu_us,
        "publish_p50_us": pub.p50_us,
        "span_cpu_us": spans,
        "off_check_ns": check,
        "drain": [f.extra for f in drained],
    }
    cpu_off = publish[0].baseline or 0.0
    share = check / 1000 / cpu_off
    ctx.results.figures += [
        *publish,
        Figure(
            "the SDK's own bare span (start + end, BatchSpanProcessor), CPU",
            bare,
            "µs",
            p50_off,
            "durable publish p50, no provider",
            bare / p50_off,
            "shown only: the SDK's, not ours",
        ),
        paired(
            "our save span (current, carrier injected, 2 attributes) vs the SDK's bare span, CPU",
            spans["bare"],
            spans["save"],
            "µs",
            "the SDK's bare span",
            shown="shown only: ours, per span",
        ),
        Figure(
            "our batch span: CPU per save it links (a batch of 500)",
            statistics.median(spans["batch_per_link"]),
            "µs",
            bare,
            "the SDK's bare span",
            statistics.median(spans["batch_per_link"]) / bare,
            "shown only",
        ),
        Figure(
            "tracing off: CPU a save pays for it",
            check,
            "ns",
            cpu_off * 1000,
            "producer CPU per durable publish, no provider",
            share,
            "<= 1% of a durable publish",
            share <= 0.01,
        ),
        *drained,
    ]
