"""Failovers under load: producers save from several threads, two workers drain, and the
primary Redis is SIGKILLed three times (each time once the workers have applied more); the
Sentinels promote a replica, and the killed server comes back as a replica of the new one.
Nobody restarts a producer or a worker.

With AGENTSTORE_PUBLISH_REPLICAS=1 nothing acknowledged may be lost, stale, duplicated or out
of order. With 0 a failover may lose acknowledged saves (whatever the promoted replica had
not received): the test measures and prints how many, and asserts only that it ran kills.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis

from agentstore_cli.launch import CeleryWorker, SentinelCluster
from broker import keys
from broker.connection import connect
from broker.errors import PublishError
from broker.sentinel import SentinelOptions
from producer import Producer
from storage.versions import new_version
from tests.plugin import ClusterFactory, WorkerFactory
from tests.reliability.audit import Audit, audit
from tests.reliability.ledger import Save
from tests.reliability.load import ProducerThread

SEED = os.environ.get("SOAK_SEED") or secrets.token_hex(4)
KILLS = 3
PRODUCERS = 3
RATE = 60.0  # ops/s per producer thread
APPLIES_BETWEEN_KILLS = 600
SENTINEL_PASSWORD = "sentinel-secret"
PASSWORD = "redis-secret"
WORKER_ENV = {
    "AGENTSTORE_RECOVERY_AFTER_S": "2",
    "AGENTSTORE_REAPER_INTERVAL_S": "0.5",
    "AGENTSTORE_BATCH_MAX": "50",
    "AGENTSTORE_BATCH_WAIT_MS": "2",
    "AGENTSTORE_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
}
STEP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0

pytestmark = pytest.mark.timeout(180)


@dataclass
class Failover:
    """One kill and what followed it, in seconds after the kill."""

    promoted: float = 0.0
    first_publish: float = 0.0
    first_apply: float = 0.0


@dataclass
class Run:
    failovers: list[Failover] = field(default_factory=list)
    audit: Audit = field(default_factory=Audit)
    publish_failures: int = 0
    workers_alive: bool = True


def _within(what: str, timeout: float, check: Callable[[], bool]) -> float:
    """Seconds until `check()` is true, polled; fails the test after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def _count(client: redis.Redis, *commands: tuple[str, ...]) -> int | None:
    try:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        return sum(int(n or 0) for n in pipe.execute())
    except redis.RedisError:
        return None  # no primary just now


def _applied_at_least(client: redis.Redis, target: int) -> Callable[[], bool]:
    return lambda: (_count(client, ("GET", keys.APPLIED_KEY)) or 0) >= target


def _failover(
    cluster: SentinelCluster, marker: Producer, index: int, saves: list[Save]
) -> Failover:
    """Kill the primary; time the promotion, the first publish after the kill (retried while
    there is no primary) and the apply of that save; then bring the killed server back.
    The save joins `saves`, for the audit."""
    old = cluster.kill_primary()
    killed = time.monotonic()
    result = Failover()
    state_id, payload, version = f"after-kill-{index}", {"kill": index}, new_version()

    def published() -> bool:
        try:
            op_id = marker.save_state("marker", state_id, payload, version=version)
        except PublishError:
            return False  # only while there is no primary; each try bounded by the timeout
        saves.append(Save("state", "marker", state_id, version, payload, op_id, -1, index))
        return True

    _within("a publish after the kill", STEP_TIMEOUT_S, published)
    result.first_publish = time.monotonic() - killed
    cluster.wait_for_primary(old, timeout=STEP_TIMEOUT_S)
    result.promoted = time.monotonic() - killed
    _within(
        "the workers to apply a save published after the kill",
        STEP_TIMEOUT_S,
        lambda: marker.get_state("marker", state_id) is not None,
    )
    result.first_apply = time.monotonic() - killed
    cluster.rejoin(old)
    cluster.wait_replicas_online(len(cluster.servers) - 1)
    return result


def _run(
    cluster: SentinelCluster, database: str, start_worker: WorkerFactory, replicas: int
) -> Run:
    options = SentinelOptions(master=cluster.master, password=SENTINEL_PASSWORD)
    settings = {
        "agentstore_sentinel_password": SENTINEL_PASSWORD,
        "agentstore_publish_replicas": replicas,
        "postgres_connection_string": database,
    }
    workers: list[CeleryWorker] = [
        start_worker(cluster.url, database, **WORKER_ENV) for _ in range(2)
    ]
    stop = threading.Event()
    producers = [
        ProducerThread(i, cluster.url, RATE, SEED, stop, producer_options=settings)
        for i in range(PRODUCERS)
    ]
    counter = connect(cluster.url, 2.0, options)
    run = Run()
    markers: list[Save] = []
    marker = Producer(broker_url=cluster.url, publish_timeout=2.0, **settings)  # type: ignore[arg-type]
    for thread in producers:
        thread.start()
    try:
        for index in range(KILLS):
            target = (index + 1) * APPLIES_BETWEEN_KILLS
            _within(
                f"{target} applies",
                STEP_TIMEOUT_S * 2,
                _applied_at_least(counter, target),
            )
            run.failovers.append(_failover(cluster, marker, index, markers))
    finally:
        stop.set()
        for thread in producers:
            thread.join(timeout=30)
    errors = [p.error for p in producers if p.error is not None]
    assert not errors, f"producer threads failed (seed {SEED}): {errors!r}"
    _within(
        "the queue to drain",
        DRAIN_TIMEOUT_S,
        lambda: _count(counter, ("ZCARD", keys.PENDING_KEY), ("LLEN", keys.QUEUE)) == 0,
    )
    run.workers_alive = all(w.alive() for w in workers)
    counter.close()
    marker.close()
    run.audit = audit([s for p in producers for s in p.saves] + markers, database)
    run.publish_failures = sum(p.publish_failures for p in producers)
    for i, f in enumerate(run.failovers):
        print(
            f"\nreplicas={replicas} kill {i + 1}: promoted after {f.promoted:.2f}s, first "
            f"publish after {f.first_publish:.2f}s, its apply after {f.first_apply:.2f}s"
        )
    a = run.audit
    print(
        f"replicas={replicas}: {a.sent} sent, {a.acked} acknowledged, {a.applied} applied, "
        f"{a.lost} acknowledged lost, {a.stale} stale, {a.duplicated} duplicated, "
        f"{a.out_of_order} out of order, {run.publish_failures} publish failures "
        f"(seed {SEED})"
    )
    return run


@pytest.fixture
def cluster(start_sentinel_cluster: ClusterFactory) -> SentinelCluster:
    return start_sentinel_cluster(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)


def test_failovers_with_one_replica_acknowledging_lose_nothing(
    cluster: SentinelCluster, database: str, start_worker: WorkerFactory
) -> None:
    run = _run(cluster, database, start_worker, replicas=1)
    assert len(run.failovers) == KILLS
    assert run.workers_alive, "a worker exited: failovers must not need a restart"
    assert run.audit.clean, f"seed {SEED}: {run.audit}\n" + "\n".join(run.audit.problems)
    assert run.audit.applied == run.audit.acked
    for failover in run.failovers:
        # Workers resume within seconds of the promotion.
        assert failover.first_apply - failover.promoted < 15.0, failover


def test_failovers_without_replica_acknowledgement_report_what_they_lost(
    cluster: SentinelCluster, database: str, start_worker: WorkerFactory
) -> None:
    run = _run(cluster, database, start_worker, replicas=0)
    assert len(run.failovers) == KILLS
    assert run.workers_alive
    # Losing acknowledged saves is what this mode allows (printed above); nothing may be
    # invented or applied twice.
    assert run.audit.foreign == 0 and run.audit.duplicated == 0, run.audit.problems
