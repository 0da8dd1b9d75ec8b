"""End-to-end drains through agentstore's worker: buffered and single-save messages."""

from __future__ import annotations

from ..report import Figure
from .context import Context
from .drain import agentstore_drain, raw_upsert
from .naive import baseline


def buffered(ctx: Context) -> None:
    """Buffered saves vs raw upserts (best of `rounds` each), the worker's peak RSS, and the
    same drain vs the naive baseline."""
    n = ctx.sizes.saves
    ctx.step(f"end to end: {n:,} buffered saves vs raw execute_values")
    raws, ours = [], []
    for _ in range(ctx.sizes.rounds):
        raws.append(raw_upsert(ctx.admin, n))
        ours.append(agentstore_drain(ctx.broker, ctx.admin, n, 500))
    best = max(ours, key=lambda d: d.rate)
    raw = ctx.results.raw
    raw["raw_upsert_rows_per_s"] = [round(r) for r in raws]
    raw["e2e_buffered"] = [
        {
            "rate": d.rate,
            "fill_s": d.fill_s,
            "drain_s": d.drain_s,
            "cpu_us_per_save": d.cpu_us_per_save,
        }
        for d in ours
    ]
    figures = ctx.results.figures
    figures.append(
        Figure(
            f"end-to-end drain, buffered producer, 2 worker processes, {n:,} saves",
            best.rate,
            "saves/s",
            max(raws),
            "raw execute_values upsert, seed DDL, pages of 1,000",
            best.rate / max(raws),
            ">= 0.75",
            best.rate / max(raws) >= 0.75,
            {
                "fill_s": best.fill_s,
                "publish_per_s": best.saves / best.fill_s,
                "cpu_us_per_save": best.cpu_us_per_save,
            },
        )
    )
    peak = max(best.peak_rss_mb.values())
    figures.append(
        Figure(
            "worker RSS at peak (largest process)",
            peak,
            "MB",
            target="<= 150 MB",
            met=peak <= 150,
            extra={"per_process": best.peak_rss_mb},
        )
    )
    naive = baseline(ctx)
    figures.append(
        Figure(
            "end-to-end drain, buffered, vs naive Celery worker",
            best.rate,
            "saves/s",
            naive.rate,
            "naive: one Celery task per save (bench/naive_worker.py)",
            best.rate / naive.rate,
            ">= 10x",
            best.rate / naive.rate >= 10,
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
