"""End-to-end drains through agentstore's worker: buffered and single-save messages."""

from __future__ import annotations

import statistics

from ..report import Figure
from .context import Context
from .drain import Drain, agentstore_drain
from .ingest import copy_merge
from .naive import baseline

# The per-process CPU table's rows that are the worker's (main process and pool children).
_WORKER = ("worker main process", "worker children")
_PG = "postgres backends"


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _median_drain(drains: list[Drain]) -> Drain:
    return sorted(drains, key=lambda d: d.rate)[len(drains) // 2]


def buffered(ctx: Context) -> None:
    """Buffered saves drained by 2 worker processes (queue filled first) vs the database's
    own limit (2-connection COPY + merge, `ingest`), `rounds` times each, interleaved; the
    same saves with producer and workers at once; CPU per save per process; peak RSS."""
    n = ctx.sizes.saves
    ctx.step(f"end to end: {n:,} buffered saves vs 2-connection COPY + merge, x{ctx.sizes.rounds}")
    copies, drains = [], []
    for _ in range(ctx.sizes.rounds):
        copies.append(copy_merge(ctx.admin, n))
        drains.append(agentstore_drain(ctx.broker, ctx.admin, n, 500))
    ctx.step(f"end to end: {n:,} buffered saves, producer and workers at once")
    overlapped = agentstore_drain(ctx.broker, ctx.admin, n, 500, overlap=True)
    copy_rate = statistics.median(c.rate for c in copies)
    copy_cpu = statistics.median(c.pg_cpu_us_per_row for c in copies)
    mid = _median_drain(drains)
    raw = ctx.results.raw
    raw["copy_merge"] = [
        {
            "rows_per_s": c.rate,
            "pg_cpu_us_per_row": c.pg_cpu_us_per_row,
            "client_cpu_us_per_row": c.client_cpu_us_per_row,
        }
        for c in copies
    ]
    raw["e2e_buffered"] = [
        {
            "rate": d.rate,
            "fill_s": d.fill_s,
            "drain_s": d.drain_s,
            "cpu_us_per_save": d.cpu_us_per_save,
            "peak_rss_mb": d.peak_rss_mb,
        }
        for d in drains
    ]
    raw["e2e_overlapped"] = {
        "rate": overlapped.rate,
        "cpu_us_per_save": overlapped.cpu_us_per_save,
    }
    figures = ctx.results.figures
    baseline_name = "2-connection COPY + merge, agentstore's schema, pages of 5,000"
    ratio = mid.rate / copy_rate
    figures.append(
        Figure(
            f"drain, buffered producer, queue filled first, 2 worker processes, {n:,} saves",
            mid.rate,
            "saves/s",
            copy_rate,
            baseline_name,
            ratio,
            ">= 0.8",
            ratio >= 0.8,
            {
                "spread": _spread([d.rate for d in drains]),
                "baseline_spread": _spread([c.rate for c in copies]),
                "publish_per_s": mid.saves / mid.fill_s,
                "cpu_us_per_save": mid.cpu_us_per_save,
            },
        )
    )
    # Both are CPU-bound on a quiet machine: the drain's rate relative to the baseline's is
    # bounded by the inverse of this ratio times the share of the cores each keeps busy.
    drain_cpu = sum(mid.cpu_us_per_save.values())
    copy_total = statistics.median(c.pg_cpu_us_per_row + c.client_cpu_us_per_row for c in copies)
    figures.append(
        Figure(
            "CPU per save, drain, every process (worker, PostgreSQL, Redis)",
            drain_cpu,
            "µs",
            copy_total,
            "CPU per row of the COPY + merge baseline: PostgreSQL + its loading threads",
            drain_cpu / copy_total,
            "shown only",
        )
    )
    figures.append(
        Figure(
            f"end to end, producer and workers at once, {n:,} saves",
            overlapped.rate,
            "saves/s",
            copy_rate,
            baseline_name,
            overlapped.rate / copy_rate,
            extra={"cpu_us_per_save": overlapped.cpu_us_per_save},
        )
    )
    worker_cpu = [sum(d.cpu_us_per_save[p] for p in _WORKER) for d in drains]
    figures.append(
        Figure(
            "worker CPU per applied save (main + children), drain",
            statistics.median(worker_cpu),
            "µs",
            target="<= 15 µs",
            met=statistics.median(worker_cpu) <= 15,
            extra={"spread": _spread(worker_cpu)},
        )
    )
    pg_cpu = statistics.median(d.cpu_us_per_save[_PG] for d in drains)
    figures.append(
        Figure(
            "PostgreSQL CPU per save, drain",
            pg_cpu,
            "µs",
            copy_cpu,
            "PostgreSQL CPU per row of the COPY + merge baseline",
            pg_cpu / copy_cpu,
            "<= 1.2x",
            pg_cpu / copy_cpu <= 1.2,
            {"spread": _spread([d.cpu_us_per_save[_PG] for d in drains])},
        )
    )
    peak = max(max(d.peak_rss_mb.values()) for d in drains)
    figures.append(
        Figure(
            "worker RSS at peak (largest process)",
            peak,
            "MB",
            target="<= 100 MB",
            met=peak <= 100,
            extra={"per_process": mid.peak_rss_mb},
        )
    )
    naive = baseline(ctx)
    figures.append(
        Figure(
            "drain, buffered, vs naive Celery worker",
            mid.rate,
            "saves/s",
            naive.rate,
            "naive: one Celery task per save (bench/naive_worker.py)",
            mid.rate / naive.rate,
            ">= 10x",
            mid.rate / naive.rate >= 10,
        )
    )


def unbuffered(ctx: Context) -> None:
    """Durable single-save messages, which the workers batch, vs the naive baseline."""
    naive = baseline(ctx)
    n = ctx.sizes.unbuffered
    ctx.step(f"unbuffered: {n:,} single-save messages")
    single = agentstore_drain(ctx.broker, ctx.admin, n, None)
    ctx.results.raw["e2e_unbuffered"] = {"rate": single.rate, "fill_s": single.fill_s}
    ctx.results.figures.append(
        Figure(
            f"end-to-end drain, single-save messages, {n:,} saves",
            single.rate,
            "saves/s",
            naive.rate,
            "naive: one Celery task per save",
            single.rate / naive.rate,
            ">= 2x",
            single.rate / naive.rate >= 2,
            {"durable_publish_per_s": single.saves / single.fill_s},
        )
    )
