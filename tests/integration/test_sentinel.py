"""Producers on a replicated Redis behind Sentinels: `sentinel://` URLs, passwords never shown,
AGENTSTORE_PUBLISH_REPLICAS (the save is on that many replicas when it returns, or
`PublishError` within `publish_timeout`), and publishing across a failover."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from agentstore_cli.launch import SentinelCluster
from broker import keys
from broker.errors import PublishError
from producer import AsyncProducer, Producer
from tests.plugin import ClusterFactory

PASSWORD = "redis-secret-1"
SENTINEL_PASSWORD = "sentinel-secret-2"


@pytest.fixture
def cluster(start_sentinel_cluster: ClusterFactory) -> SentinelCluster:
    return start_sentinel_cluster(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)


def settings(cluster: SentinelCluster, replicas: int) -> dict[str, object]:
    return {
        "broker_url": cluster.url,
        "agentstore_sentinel_master": cluster.master,
        "agentstore_sentinel_password": SENTINEL_PASSWORD,
        "agentstore_publish_replicas": replicas,
    }


def replica_clients(cluster: SentinelCluster) -> list[redis.Redis]:
    primary = cluster.primary()
    return [s.client() for s in cluster.servers if s is not primary and s.process is not None]


def test_a_durable_save_is_on_every_replica_asked_for_when_it_returns(
    cluster: SentinelCluster,
) -> None:
    replicas = replica_clients(cluster)
    with Producer(**settings(cluster, replicas=2)) as store:  # type: ignore[arg-type]
        shown = repr(store)
        for i in range(30):
            op_id = store.save_state("agent", f"s{i}", {"i": i})
            assert op_id is not None
            # WAIT 2: both replicas have applied the publish when the call returns.
            for replica in replicas:
                assert replica.zscore(keys.PENDING_KEY, op_id) is not None, (i, replica)
    assert PASSWORD not in shown and SENTINEL_PASSWORD not in shown
    assert "sentinel://" in shown and "***" in shown


def test_more_replicas_than_there_are_raises_publish_error_within_the_timeout(
    cluster: SentinelCluster,
) -> None:
    with Producer(publish_timeout=1.0, **settings(cluster, replicas=3)) as store:  # type: ignore[arg-type]
        start = time.monotonic()
        with pytest.raises(PublishError) as caught:
            store.save_state("agent", "s", {"v": 1})
        took = time.monotonic() - start
    assert took < 1.5, took
    assert "only 2 of the 3 replica(s)" in str(caught.value)
    assert caught.value.may_be_published
    assert PASSWORD not in str(caught.value) and SENTINEL_PASSWORD not in str(caught.value)


def test_buffered_flush_reports_a_batch_the_replicas_did_not_acknowledge(
    cluster: SentinelCluster,
) -> None:
    store = Producer(linger_ms=5, publish_timeout=1.0, **settings(cluster, replicas=3))  # type: ignore[arg-type]
    try:
        store.save_state("agent", "s", {"v": 1})
        with pytest.raises(PublishError, match="only 2 of the 3 replica"):
            store.flush(timeout=3.0)
    finally:
        with pytest.raises(PublishError):
            store.close(timeout=0.5)


def test_async_producer_waits_for_the_replicas_too(cluster: SentinelCluster) -> None:
    replicas = replica_clients(cluster)

    async def run() -> None:
        async with AsyncProducer(**settings(cluster, replicas=2)) as store:  # type: ignore[arg-type]
            for i in range(20):
                op_id = await store.save_state("agent", f"s{i}", {"i": i})
                for replica in replicas:
                    assert replica.zscore(keys.PENDING_KEY, op_id) is not None, i
        async with AsyncProducer(publish_timeout=1.0, **settings(cluster, replicas=3)) as store:  # type: ignore[arg-type]
            with pytest.raises(PublishError, match="only 2 of the 3 replica"):
                await store.save_state("agent", "s", {"v": 1})

    asyncio.run(run())


def test_saves_carry_on_through_a_failover_without_a_new_producer(
    cluster: SentinelCluster,
) -> None:
    timeout = 2.0
    acknowledged: list[str] = []
    failures: list[tuple[float, BaseException]] = []
    durations: list[float] = []
    stop = threading.Event()
    with Producer(publish_timeout=timeout, **settings(cluster, replicas=1)) as store:  # type: ignore[arg-type]

        def publish() -> None:
            i = 0
            while not stop.is_set():
                start = time.monotonic()
                try:
                    op_id = store.save_state("agent", f"s{i % 50}", {"i": i})
                    assert op_id is not None
                    acknowledged.append(op_id)
                except PublishError as exc:
                    failures.append((time.monotonic(), exc))
                durations.append(time.monotonic() - start)
                i += 1

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while len(acknowledged) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            before = len(acknowledged)
            old = cluster.kill_primary()
            killed_at = time.monotonic()
            cluster.wait_for_primary(old)
            promoted_at = time.monotonic()
            deadline = promoted_at + 10
            while len(acknowledged) < before + 100 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(timeout=10)
    assert len(acknowledged) >= before + 100, "saves did not resume after the promotion"
    assert failures, "killing the primary made no save fail: the test did not test a failover"
    # Failures only between the kill and shortly after the promotion (the other replica
    # resyncs with the new primary before WAIT 1 succeeds); none took too long.
    assert all(killed_at - 0.1 <= at <= promoted_at + timeout + 3.0 for at, _ in failures)
    assert max(durations) <= timeout + 0.5, max(durations)
    # Every acknowledged save is on the new primary (WAIT 1, and the promoted replica is the
    # one with the most data).
    client = cluster.primary().client()
    try:
        scores = client.zmscore(keys.PENDING_KEY, acknowledged)
    finally:
        client.close()
    missing = [op for op, score in zip(acknowledged, scores, strict=True) if score is None]
    assert not missing, f"{len(missing)} acknowledged saves lost by the failover"


def test_async_saves_carry_on_through_a_failover(cluster: SentinelCluster) -> None:
    timeout = 2.0

    async def run() -> tuple[int, int, float]:
        acknowledged, failures, longest = 0, 0, 0.0
        async with AsyncProducer(publish_timeout=timeout, **settings(cluster, replicas=1)) as store:  # type: ignore[arg-type]

            async def save(i: int) -> None:
                nonlocal acknowledged, failures, longest
                start = time.monotonic()
                try:
                    await store.save_state("agent", f"s{i % 20}", {"i": i})
                    acknowledged += 1
                except PublishError:
                    failures += 1
                longest = max(longest, time.monotonic() - start)

            for i in range(50):
                await save(i)
            old = await asyncio.to_thread(cluster.kill_primary)
            promoted = asyncio.ensure_future(asyncio.to_thread(cluster.wait_for_primary, old))
            i = 50
            while not promoted.done():
                await save(i)
                i += 1
            await promoted
            # Right after the promotion WAIT 1 may still fail: the other replica resyncs
            # with the new primary first. Then saves go through again, same producer.
            before, deadline = acknowledged, time.monotonic() + 15
            while acknowledged < before + 50 and time.monotonic() < deadline:
                await save(i)
                i += 1
            assert acknowledged >= before + 50, "async saves did not resume after the promotion"
        return acknowledged, failures, longest

    acknowledged, failures, longest = asyncio.run(run())
    assert acknowledged >= 100
    assert failures, "killing the primary made no save fail: the test did not test a failover"
    assert longest <= timeout + 0.5, longest
