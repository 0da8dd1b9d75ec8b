"""Histogram observations in bulk, for the producer's and the worker's Prometheus metrics:
a bisect per value, then one locked (in multiprocess mode, file-backed) update per bucket.

Relies on prometheus-client's `_upper_bounds`, `_buckets` and `_sum` (checked by
tests/unit/test_metrics.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from prometheus_client import Histogram


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for every value, updating each bucket once: a batch's
    thousands of lags cost one bisect each instead of thousands of locked (in multiprocess
    mode, file-backed) updates. Relies on prometheus-client's `_upper_bounds`, `_buckets`
    and `_sum` (checked by tests/unit/test_metrics.py)."""
    observe_bucketed(histogram, bucketed(histogram._upper_bounds, values))


def bucketed(bounds: list[float], values: Iterable[float]) -> tuple[list[int], float]:
    """How many of `values` fall in each bucket of `bounds`, and their sum."""
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
        total += value
    return counts, total


def observe_bucketed(histogram: Histogram, counted: tuple[list[int], float]) -> None:
    """Add `bucketed`'s counts and sum to `histogram`."""
    counts, total = counted
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)
