"""The metrics helpers without a worker: batched histogram updates, producer metrics."""

from __future__ import annotations

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, Histogram

from broker.errors import PublishError
from broker.histograms import observe_all
from broker.wire import Batch
from producer import Producer
from producer.metrics import _FLUSH_AT, ProducerMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_all_equals_observing_one_by_one() -> None:
    values = [0.0, 0.004, 0.005, 0.006, 0.7, 3.0, 99.0, 1e9]
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("lag", "", buckets=(0.005, 0.5, 5, 100), registry=one)
    for value in values:
        by_one.observe(value)
    observe_all(Histogram("lag", "", buckets=(0.005, 0.5, 5, 100), registry=many), values)
    assert _samples(one) == _samples(many)


def test_a_producer_counts_its_publishes_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fakeredis.FakeRedis()
    monkeypatch.setattr("broker.publisher.connect", lambda url, timeout, sentinel=None: fake)
    registry = CollectorRegistry()
    prod = Producer(broker_url="redis://127.0.0.1:6379/0", metrics=registry)
    try:
        prod.save_state("a", "s", {"x": 1})
        prod.apply([])
        prod.save_task("a", "t", {"x": 1})
        samples = _samples(registry)
        assert samples[("agentstore_producer_publishes_total", ())] == 2
        assert samples[("agentstore_producer_published_ops_total", ())] == 2
        assert samples[("agentstore_producer_publish_seconds_count", ())] == 2
        assert samples[("agentstore_producer_buffered_ops", ())] == 0
        monkeypatch.setattr(
            prod._publisher, "publish", lambda messages: (_ for _ in ()).throw(PublishError("x"))
        )
        with pytest.raises(PublishError):
            prod.save_state("a", "s", {"x": 2})
        assert _samples(registry)[("agentstore_producer_publish_errors_total", ())] == 1
    finally:
        prod.close()


def test_a_producers_publishes_are_queued_and_moved_into_its_metrics_in_bulk() -> None:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry)
    sent: list[Batch] = []
    batch: Batch = [("m1", b"{}", ["a", "b"]), ("m2", b"{}", ["c"])]
    for _ in range(_FLUSH_AT + 10):
        metrics.publish(sent.append, batch)
    assert len(sent) == _FLUSH_AT + 10
    assert len(metrics._pending) == 10  # the first _FLUSH_AT were moved without a scrape
    # A scrape, even one of a single metric, moves the rest first.
    only = registry.restricted_registry(["agentstore_producer_publishes_total"])
    assert [s.value for m in only.collect() for s in m.samples if s.name.endswith("_total")] == [
        _FLUSH_AT + 10
    ]
    samples = _samples(registry)
    assert samples[("agentstore_producer_published_ops_total", ())] == 3 * (_FLUSH_AT + 10)
    assert samples[("agentstore_producer_publish_seconds_count", ())] == _FLUSH_AT + 10
    assert samples[("agentstore_producer_publish_seconds_bucket", (("le", "0.0005"),))] > 0
