"""Throughput vs batch size: agentstore's drain and the raw upsert loop at each size."""

from __future__ import annotations

from .context import Context
from .drain import agentstore_drain, raw_upsert

SWEEP = (10, 100, 500, 1000, 2000, 5000)  # ops per transaction


def sweep(ctx: Context) -> None:
    n = ctx.sizes.sweep
    ctx.step(f"sweep: {n:,} saves per batch size {SWEEP}")
    points = []
    for size in SWEEP:
        # Batch size = ops per transaction: the worker's AGENTSTORE_BATCH_MAX (with
        # messages no larger), and rows per page and commit for the raw baseline.
        d = agentstore_drain(
            ctx.broker, ctx.admin, n, min(size, 500), env={"AGENTSTORE_BATCH_MAX": str(size)}
        )
        points.append(
            {"batch": size, "agentstore_per_s": d.rate, "raw_per_s": raw_upsert(ctx.admin, n, size)}
        )
    ctx.results.raw["sweep"] = points
