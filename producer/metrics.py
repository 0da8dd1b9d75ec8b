"""A producer's side in Prometheus: publishes, their errors and latency, buffered ops.

Off unless asked for (`Producer(metrics=True)` or `metrics=<registry>`): the metrics live in
the application's registry, which the application serves itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric

from broker.errors import PublishError
from broker.histograms import bucketed, observe_bucketed
from broker.wire import Batch


class _Buffered(Protocol):
    @property
    def buffered(self) -> int: ...


# Publishes wait in a queue at most this many before they are moved into the metrics (a
# collection moves them too, first), so an application that never scrapes holds no more.
_FLUSH_AT = 256
_clock = time.perf_counter


class ProducerMetrics:
    """The metrics of every producer that uses one registry.

    A publish appends its duration and op count to a queue (one deque append, no lock);
    they are moved into the counters and histogram in bulk at each collection, before the
    metrics are read, and every `_FLUSH_AT` publishes: a scrape shows every publish that
    returned before it, at a fraction of four locked updates per publish.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter(
            "agentstore_producer_publishes",
            "atomic publishes to the broker (each of one or more messages)",
            registry=None,
        )
        self.ops = Counter("agentstore_producer_published_ops", "ops published", registry=None)
        self.errors = Counter(
            "agentstore_producer_publish_errors",
            "publishes that raised PublishError",
            registry=None,
        )
        self.seconds = Histogram(
            "agentstore_producer_publish_seconds",
            "time one publish took, retries included",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=None,
        )
        self._producers: weakref.WeakSet[_Buffered] = weakref.WeakSet()
        buffered = Gauge(
            "agentstore_producer_buffered_ops",
            "ops saved but not yet published (buffered producers)",
            registry=None,
        )
        buffered.set_function(lambda: sum(p.buffered for p in list(self._producers)))
        self._metrics = (self.publishes, self.ops, self.errors, self.seconds, buffered)
        self._pending: deque[tuple[float, int]] = deque()
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield from metric.describe()

    def collect(self) -> Iterator[Metric]:
        self.flush()
        for metric in self._metrics:
            yield from metric.collect()

    def flush(self) -> None:
        """Move the queued publishes into the metrics."""
        taken = []
        with contextlib.suppress(IndexError):  # deque.popleft is atomic: no lock needed
            while True:
                taken.append(self._pending.popleft())
        if taken:
            self.publishes.inc(len(taken))
            self.ops.inc(sum(n for _, n in taken))
            observe_bucketed(
                self.seconds, bucketed(self.seconds._upper_bounds, (s for s, _ in taken))
            )

    def watch(self, producer: _Buffered) -> None:
        """Count `producer`'s buffered ops while it lives."""
        self._producers.add(producer)

    def publish(self, send: Callable[[Batch], None], batch: Batch) -> None:
        """`send(batch)`, counted and timed."""
        started = _clock()
        try:
            send(batch)
        except PublishError:
            self.errors.inc()
            self.seconds.observe(_clock() - started)
            raise
        elapsed = _clock() - started
        # A durable save publishes one message of one op: no generator for that.
        ops = len(batch[0][2]) if len(batch) == 1 else sum([len(ids) for _, _, ids in batch])
        pending = self._pending
        pending.append((elapsed, ops))
        if len(pending) >= _FLUSH_AT:
            self.flush()


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ProducerMetrics] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def metrics_for(registry: CollectorRegistry | None) -> ProducerMetrics:
    """The one `ProducerMetrics` of `registry` (prometheus-client's default one if None):
    producers sharing a registry share its metrics."""
    registry = registry or REGISTRY
    with _lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _by_registry[registry] = ProducerMetrics(registry)
        return found
