"""What a feature (metrics, tracing) costs, off and on in one run on a shared machine.

Off and on alternate, several rounds each, and each round's on is divided by the off next
to it: a change in the neighbours' load hits a pair alike. A figure is the median of those
paired ratios, its spread (lowest and highest) beside it. CPU time per save (of the
processes that do the work) is gated; wall-clock figures (p50, throughput) are shown next
to it only: on this machine two identical drains' rates differed up to 3x, far more than
the costs measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from ..report import MAX_SLOWDOWN, Figure
from .drain import Drain

BLOCK = 500  # calls per timed block of a publish measurement
WALL = "shown only (wall time)"


def paired(
    name: str,
    off: list[float],
    on: list[float],
    unit: str,
    baseline: str,
    *,
    rate: bool = False,
    shown: str | None = None,
) -> Figure:
    """Rounds `off[i]` and `on[i]` were measured next to each other: the median of their
    ratios (how many times slower on is), the median of each side as its value; gated at
    `MAX_SLOWDOWN` unless `shown` says why it is shown only."""
    ratios = [b / a if rate else a / b for a, b in zip(on, off, strict=True)]
    ratio = statistics.median(ratios)
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return Figure(
        name,
        statistics.median(on),
        unit,
        statistics.median(off),
        f"{baseline}; median of {len(ratios)} paired rounds, ratios {spread}",
        ratio,
        shown or f"<= {MAX_SLOWDOWN}x slower",
        None if shown else ratio <= MAX_SLOWDOWN,
        {"off": off, "on": on, "ratios": ratios},
    )


def pair_order(index: int) -> tuple[bool, bool]:
    """Which side runs first in pair `index`: off-on, then on-off, and so on."""
    return (False, True) if index % 2 == 0 else (True, False)


@dataclass
class Alternated:
    """Calls timed in alternating blocks: each block's median latency and process CPU time
    per call (this process: the caller's side of a publish)."""

    p50_us: dict[bool, list[float]]
    cpu_us: dict[bool, list[float]]


def alternate(
    call: Callable[[bool, int], None],
    n: int,
    around: Callable[[bool], AbstractContextManager[object]] = lambda on: nullcontext(),
) -> Alternated:
    """`call(on, i)` off and on in alternating blocks of `BLOCK` calls (each block inside
    `around(on)`), `n` of each after `BLOCK` untimed warm-up calls of each. The pairs go
    off-on, then on-off, and so on: neither side is always the one that runs second."""
    for on in (False, True):  # the connection, the script, the tracer
        with around(on):
            for i in range(BLOCK):
                call(on, i)
    found = Alternated({False: [], True: []}, {False: [], True: []})
    for block in range(2 * max(1, n // BLOCK)):
        on = pair_order(block // 2)[block % 2]
        samples = []
        with around(on):
            cpu = time.process_time_ns()
            for i in range(BLOCK):
                t0 = time.perf_counter_ns()
                call(on, i)
                samples.append((time.perf_counter_ns() - t0) / 1000)
            found.cpu_us[on].append((time.process_time_ns() - cpu) / BLOCK / 1000)
        found.p50_us[on].append(statistics.median(samples))
    return found


def publish_figures(name: str, runs: list[Alternated], baseline: str) -> list[Figure]:
    """A durable publish off and on: caller CPU per save (gated) and p50 (shown)."""
    cpu = paired(
        f"{name}: producer CPU per save",
        [c for r in runs for c in r.cpu_us[False]],
        [c for r in runs for c in r.cpu_us[True]],
        "µs",
        baseline,
    )
    p50 = paired(
        f"{name}: p50",
        [c for r in runs for c in r.p50_us[False]],
        [c for r in runs for c in r.p50_us[True]],
        "µs",
        baseline,
        shown=WALL,
    )
    return [cpu, p50]


def drain_figures(
    name: str, off: list[Drain], on: list[Drain], baseline: str, *, producer: bool
) -> list[Figure]:
    """Drains off and on: CPU per save of everything that works in a drain (worker,
    PostgreSQL, Redis) and, with `producer` (the feature is on in it too), of the producer
    that filled the queue, gated; throughput shown."""
    figures = [
        paired(
            f"{name}: worker, PostgreSQL and Redis CPU per save",
            [sum(d.cpu_us_per_save.values()) for d in off],
            [sum(d.cpu_us_per_save.values()) for d in on],
            "µs",
            baseline,
        ),
        paired(
            f"{name}: throughput",
            [d.rate for d in off],
            [d.rate for d in on],
            "saves/s",
            baseline,
            rate=True,
            shown=WALL,
        ),
    ]
    if producer:
        figures.insert(
            1,
            paired(
                f"{name}: producer CPU per save (filling the queue)",
                [d.producer_cpu_us for d in off],
                [d.producer_cpu_us for d in on],
                "µs",
                baseline,
            ),
        )
    return figures
