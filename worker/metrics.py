"""The worker's Prometheus metrics, and the /metrics endpoint its main process serves.

Pool children count what they do in prometheus-client's multiprocess files (see
`worker.multiproc`); the main process sums every process's files at each scrape, so the
numbers are the worker's. A child killed by SIGKILL leaves its counters' file behind, so
nothing it counted is lost.

Each message's ops are counted once, by the process whose settle (`broker/settle.lua`) was
the first for that message, right after that settle answers: ops the store wrote ("new")
or already held at their own version ("held": applied by a process killed before it
settled) count as applied, ops whose version lost as stale (`StorageBackend.commit`). A
redelivered copy of a message settled before counts nothing. So a child killed anywhere
before its settle leaves the counting to the redelivery, and the only window left is
between the settle's reply and the in-memory counter increments that follow it (no I/O):
a child killed there, or a settle whose reply is lost, leaves its messages' ops uncounted.
Two approximations remain: a store keeps no op id per row, so another op of exactly the
same version (only if the caller picks versions) counts as "held"; and a redelivered op
whose row a newer save overwrote meanwhile counts as stale.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import Metric

from broker.stats import StatsCollector
from storage.ops import Op, OpName
from storage.records import Outcome

log = logging.getLogger(__name__)

OPS_APPLIED = Counter("agentstore_ops_applied", "ops committed to the store", ["kind", "backend"])
OPS_STALE = Counter(
    "agentstore_ops_stale", "ops whose version lost (already applied, or older)", ["kind"]
)
DEAD_LETTERS = Counter(
    "agentstore_dead_letters",
    "ops and messages dead-lettered; reason: invalid, malformed, permanent or transient",
    ["reason"],
)
APPLY_LAG = Histogram(
    "agentstore_apply_lag_seconds",
    "from the producer's publish to the worker's commit, per committed op",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
BATCH_OPS = Histogram(
    "agentstore_batch_ops",
    "ops per batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
BATCH_SECONDS = Histogram(
    "agentstore_batch_seconds",
    "time to gather, apply and confirm one batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REAPER_REPUBLISHED = Counter(
    "agentstore_reaper_republished", "messages the reaper republished after a lost delivery"
)
RETRIES = Counter("agentstore_retries", "transient apply failures retried", ["error"])
STORE_ERRORS = Counter(
    "agentstore_store_errors", "failed apply calls, by exception type", ["backend", "error"]
)
WORKER_PROCESSES = Gauge(
    "agentstore_worker_processes",
    "live pool processes",
    multiprocess_mode="livesum",
)


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for every value, updating each bucket once: a batch's
    thousands of lags cost one bisect each instead of thousands of locked (in multiprocess
    mode, file-backed) updates. Relies on prometheus-client's `_upper_bounds`, `_buckets`
    and `_sum` (checked by tests/unit/test_metrics.py)."""
    _observe_bucketed(histogram, _bucketed(histogram._upper_bounds, values))


def _bucketed(bounds: list[float], values: Iterable[float]) -> tuple[list[int], float]:
    """How many of `values` fall in each bucket of `bounds`, and their sum."""
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
        total += value
    return counts, total


def _observe_bucketed(histogram: Histogram, bucketed: tuple[list[int], float]) -> None:
    counts, total = bucketed
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)


class _LiveFiles(multiprocess.MultiProcessCollector):
    """Sums every process's files, first dropping the live gauges of processes that are
    gone (a SIGKILLed child never says so itself)."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]
        self._dir = Path(path)

    def collect(self) -> Iterator[Metric]:
        for pid in {int(f.stem.rsplit("_", 1)[1]) for f in self._dir.glob("gauge_live*_*.db")}:
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, str(self._dir))  # type: ignore[no-untyped-call]
        return super().collect()  # type: ignore[no-untyped-call,no-any-return]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_registry(broker: redis.Redis) -> CollectorRegistry:
    """Every process's metrics summed, the broker's gauges, and the main process's own
    `process_*` metrics."""
    registry = CollectorRegistry()
    _LiveFiles(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    registry.register(StatsCollector(broker))
    ProcessCollector(registry=registry)
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve `registry` on http://host:port/metrics from a daemon thread.

    Always Prometheus' text format 0.0.4, whatever the scraper accepts: in OpenMetrics the
    counter `agentstore_dead_letters_total` and the gauge `agentstore_dead_letters` would be
    one family twice, and the whole scrape would fail.
    """

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]

    server = make_server(host, port, app, handler_class=_QuietHandler)
    # Pool children are forked from this process: their copy of the socket is closed, so
    # the port is free again as soon as the main process exits.
    os.register_at_fork(after_in_child=server.socket.close)
    threading.Thread(target=server.serve_forever, name="agentstore-metrics", daemon=True).start()
    return server


# The `kind` label of each op name: what it saves or deletes ("agent" for erase_agent).
KIND_OF: dict[str, str] = {
    name: name.split("_", 1)[1].removesuffix("s") for name in get_args(OpName)
}


# One committed part of a batch: its ops as (op, message id), what the store reported for
# each (`StorageBackend.commit`), and when it committed (time.time()).
Committed = tuple[Sequence[tuple[Op, str]], Sequence[Outcome], float]


@dataclass(slots=True)
class Tally:
    """What a settled batch adds to the counters, worked out before its settle, so that
    little but the increments themselves runs after the settle's reply."""

    applied: dict[str, int] = field(default_factory=dict)  # per kind
    stale: dict[str, int] = field(default_factory=dict)  # per kind
    lags: dict[str, tuple[list[int], float]] = field(default_factory=dict)  # kind -> buckets
    dead: dict[str, int] = field(default_factory=dict)  # per reason


def tally(
    parts: Iterable[Committed],
    published: Mapping[str, float],
    letters: Iterable[tuple[str | None, str]],
    first: Container[str] | None = None,
) -> Tally:
    """What to count of a batch: of its committed `parts`, "new" and "held" ops as applied
    and "stale" ones as stale, with their lags from `published` (their messages' publish
    times); its dead `letters` (message id or None, reason) by reason. With `first`, only
    what belongs to those messages (the ones this settle was the first for), and letters
    of messages without an id (never redelivered)."""
    counts = Tally()
    lags: dict[str, list[float]] = {}
    for ops, outcomes, when in parts:
        for (op, mid), outcome in zip(ops, outcomes, strict=True):
            if first is not None and mid not in first:
                continue
            kind = KIND_OF[op.op]
            if outcome == "stale":
                counts.stale[kind] = counts.stale.get(kind, 0) + 1
                continue
            counts.applied[kind] = counts.applied.get(kind, 0) + 1
            sent = published.get(mid)
            if sent is not None:  # messages of other publishers carry no publish time
                lags.setdefault(kind, []).append(max(when - sent, 0.0))
    counts.lags = {kind: _bucketed(_LAG_BOUNDS, values) for kind, values in lags.items()}
    for letter_of, reason in letters:
        if first is None or letter_of is None or letter_of in first:
            counts.dead[reason] = counts.dead.get(reason, 0) + 1
    return counts


_LAG_BOUNDS: list[float] = APPLY_LAG._upper_bounds


def dead_lettered(mid: str | None, reason: str, first: Container[str]) -> None:
    """Count one dead letter of message `mid` (None: no id), settled with `first`."""
    add(tally((), {}, [(mid, reason)], first), "")


def add(counts: Tally, backend: str) -> None:
    """Add a `tally` to the counters; `backend` names the store."""
    for kind, count in counts.applied.items():
        OPS_APPLIED.labels(kind, backend).inc(count)
    for kind, count in counts.stale.items():
        OPS_STALE.labels(kind).inc(count)
    for kind, bucketed in counts.lags.items():
        _observe_bucketed(APPLY_LAG.labels(kind), bucketed)
    for reason, count in counts.dead.items():
        DEAD_LETTERS.labels(reason).inc(count)


def batch_done(ops: int, seconds: float) -> None:
    """Count one finished batch of `ops` ops that took `seconds`."""
    BATCH_OPS.observe(ops)
    BATCH_SECONDS.observe(seconds)
