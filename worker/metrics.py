"""The worker's Prometheus metrics, and the /metrics endpoint its main process serves.

Pool children count what they do in prometheus-client's multiprocess files (see
`worker.multiproc`); the main process sums every process's files at each scrape, so the
numbers are the worker's. A child killed by SIGKILL leaves its counters' file behind, so
nothing it counted is lost.

Ops, their lags and dead letters are counted once per message, at the settle that was the
first for that message (`worker.tallies`): ops the store wrote ("new") or already held at
their own version ("held": applied by a process killed before it settled) count as applied,
ops whose version lost as stale (`StorageBackend.commit`); a redelivered copy of a message
settled before counts nothing. With metrics on, the settle itself hands the batch's counts
to the main process through Redis, atomically, so a child killed before, during or after
its settle loses none and doubles none. Left: a batch holding a message settled before (a
redelivered copy) or one of another publisher is counted by its child after the settle (a
kill between the reply and those in-memory increments, no I/O, leaves them uncounted),
see `worker.tallies`; a store keeps no op id per row, so
another op of exactly the same version (only if the caller picks versions) counts as
"held"; and a redelivered op whose row a newer save overwrote meanwhile counts as stale.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
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
from prometheus_client.registry import Collector

from broker.stats import StatsCollector

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


def worker_registry(broker: redis.Redis, before: Iterable[Collector] = ()) -> CollectorRegistry:
    """Every process's metrics summed, the broker's gauges, and the main process's own
    `process_*` metrics; `before` are collected first, at each scrape."""
    registry = CollectorRegistry()
    for collector in before:
        registry.register(collector)
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


def batch_done(ops: int, seconds: float) -> None:
    """Count one finished batch of `ops` ops that took `seconds`."""
    BATCH_OPS.observe(ops)
    BATCH_SECONDS.observe(seconds)
