"""A producer's side in Prometheus: publishes, their errors and latency, buffered ops.

Off unless asked for (`Producer(metrics=True)` or `metrics=<registry>`): the metrics live in
the application's registry, which the application serves itself.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from broker.errors import PublishError
from broker.wire import Batch


class _Buffered(Protocol):
    @property
    def buffered(self) -> int: ...


class ProducerMetrics:
    """The metrics of every producer that uses one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter(
            "agentstore_producer_publishes",
            "atomic publishes to the broker (each of one or more messages)",
            registry=registry,
        )
        self.ops = Counter("agentstore_producer_published_ops", "ops published", registry=registry)
        self.errors = Counter(
            "agentstore_producer_publish_errors",
            "publishes that raised PublishError",
            registry=registry,
        )
        self.seconds = Histogram(
            "agentstore_producer_publish_seconds",
            "time one publish took, retries included",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self._producers: weakref.WeakSet[_Buffered] = weakref.WeakSet()
        Gauge(
            "agentstore_producer_buffered_ops",
            "ops saved but not yet published (buffered producers)",
            registry=registry,
        ).set_function(lambda: sum(p.buffered for p in list(self._producers)))

    def watch(self, producer: _Buffered) -> None:
        """Count `producer`'s buffered ops while it lives."""
        self._producers.add(producer)

    def publish(self, send: Callable[[Batch], None], batch: Batch) -> None:
        """`send(batch)`, counted and timed."""
        started = time.perf_counter()
        try:
            send(batch)
        except PublishError:
            self.errors.inc()
            raise
        finally:
            self.seconds.observe(time.perf_counter() - started)
        self.publishes.inc()
        self.ops.inc(sum(len(op_ids) for _, _, op_ids in batch))


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
