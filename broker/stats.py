"""The broker's numbers, for `agentstore stats` and every worker's /metrics alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import keys, scripts

log = logging.getLogger(__name__)

_STATS = scripts.load("stats")
_KEYS = [keys.QUEUE, keys.PENDING_KEY, keys.MESSAGES_KEY, keys.KOMBU_UNACKED_KEY, keys.DLQ_KEY]
# Messages whose ops are counted one by one per call; a deeper queue's ops are extrapolated
# from these, so a scrape stays a few milliseconds of Redis time however deep the queue.
COUNT_OPS_OF = 10_000


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What is waiting in the broker, as of one moment."""

    queued: int  # messages in the queue
    queued_ops: int  # ops in them (estimated beyond `COUNT_OPS_OF` messages)
    pending: int  # published, not yet applied or dead-lettered
    unacked: int  # delivered to a worker, not yet acknowledged
    dead_letters: int
    # Seconds since the oldest pending message was published; 0 when none is pending (or
    # it came from a publisher that does not stamp `published`).
    oldest_pending_s: float


def queue_stats(client: redis.Redis, count_ops_of: int = COUNT_OPS_OF) -> QueueStats:
    """The broker's `QueueStats`, read in one atomic script."""
    depth, ops, counted, pending, unacked, dead, published = client.register_script(_STATS)(
        keys=_KEYS, args=[count_ops_of]
    )
    if counted and counted < depth:
        ops = round(ops * depth / counted)
    age = max(time.time() - float(published), 0.0) if published else 0.0
    return QueueStats(int(depth), int(ops), int(pending), int(unacked), int(dead), age)


class StatsCollector(Collector):
    """`QueueStats` as Prometheus gauges, read from Redis at each collection (one script).

    `agentstore_broker_up` is 0, and the others absent, while the broker does not answer.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def collect(self) -> Iterator[Metric]:
        try:
            stats = queue_stats(self._redis)
        except redis.RedisError as exc:
            log.warning("broker statistics unavailable: %s", type(exc).__name__)
            stats = None
        yield GaugeMetricFamily(
            "agentstore_broker_up", "1 if the broker answered this scrape", int(stats is not None)
        )
        if stats is None:
            return
        for name, doc, value in (
            ("queue_depth", "messages waiting in the queue", stats.queued),
            ("queue_ops", "ops in the messages waiting in the queue", stats.queued_ops),
            (
                "pending_messages",
                "messages published, not yet applied or dead-lettered",
                stats.pending,
            ),
            (
                "unacked_messages",
                "messages delivered to a worker, not yet acknowledged",
                stats.unacked,
            ),
            ("dead_letters", "dead letters stored (agentstore dlq list)", stats.dead_letters),
            (
                "pending_oldest_seconds",
                "age of the oldest published, unconfirmed message",
                stats.oldest_pending_s,
            ),
        ):
            yield GaugeMetricFamily(f"agentstore_{name}", doc, value)


def exposition(client: redis.Redis) -> bytes:
    """The broker's gauges in Prometheus' text format, once (`agentstore stats --format
    prometheus`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(client))
    return generate_latest(registry)
