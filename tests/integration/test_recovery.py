"""Failures mid-drain: killed workers, killed database connections, a restarted broker."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis

from agentstore_cli.launch import RedisServer, free_port
from broker import keys, wire
from broker.deadletters import DeadLetters
from producer import Producer, PublishError
from storage.pg_url import options
from tests.integration.helpers import (
    Workload,
    pending,
    pending_at_most,
    producer,
    rows,
    wait_until,
)
from tests.plugin import RedisFactory, WorkerFactory
from tests.queued import pending_ids

# The workers' recovery period (tests/plugin.py's start_worker), with a round every 0.5 s.
RECOVERY_AFTER_S = 3.0
# Small batches and no batch wait: many batches in flight, so kills land mid-batch.
SLOW = {"AGENTSTORE_BATCH_MAX": "20", "AGENTSTORE_BATCH_WAIT_MS": "0"}


def _in_flight(client: redis.Redis) -> set[str]:
    """Pending messages that are not in the queue: taken by the worker, not yet confirmed."""
    queued = {wire.message_id_of(raw) for raw in client.lrange(keys.QUEUE, 0, -1)}
    return {mid for mid in pending_ids(client) if mid not in queued}


class RecoveryClock:
    """Times, for each kill, how long until nothing it had in flight was lost any more (each
    message back in the queue or confirmed), counted from the kill or from the start of the
    worker that came after it, whichever is later: the reaper runs in the workers."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._open: list[tuple[float, list[str]]] = []
        self._up_since = 0.0
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def worker_ready(self) -> None:
        self._up_since = time.monotonic()

    def killed(self, in_flight: set[str]) -> None:
        if in_flight:
            self._open.append((time.monotonic(), list(in_flight)))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for item in list(self._open):
                start, ids = item
                queued = self._queued(ids)
                scores = self._redis.zmscore(keys.PENDING_KEY, ids)
                if all(s is None or mid in queued for mid, s in zip(ids, scores, strict=True)):
                    self.times.append(time.monotonic() - max(start, self._up_since))
                    self._open.remove(item)

    def _queued(self, ids: list[str]) -> set[str]:
        # Pushed back to the consuming end, so they are among the last entries until taken.
        tail = self._redis.lrange(keys.QUEUE, -len(ids) - 100, -1)
        return {mid for raw in tail if (mid := wire.message_id_of(raw))} & set(ids)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_sigkill_mid_drain_ten_times_loses_nothing(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    work = Workload(keys=1000, versions=4, messages=2000)
    client = redis.Redis.from_url(broker)
    clock = RecoveryClock(client)
    try:
        with producer(broker, database) as prod:
            work.publish(prod)
            assert pending(client) == work.total
            lost_in_flight = 0
            for _ in range(10):
                worker = start_worker(broker, database, **SLOW)
                clock.worker_ready()
                before = pending(client)
                # Triggered by progress, not by a timer: 150 more messages confirmed.
                wait_until("progress", pending_at_most(client, before - 150), 60, 0.005)
                in_flight = _in_flight(client)
                worker.kill()
                lost_in_flight += len(in_flight)
                clock.killed(in_flight)
            start_worker(broker, database)
            clock.worker_ready()
            started = time.monotonic()
            prod.wait(timeout=120)
            drained = time.monotonic() - started
            wait_until("recovery clock", lambda: not clock._open, 10)
            work.check(prod)
        assert DeadLetters(broker).count() == 0
        assert max(clock.times) <= RECOVERY_AFTER_S + 2, clock.times
        print(
            f"\nSIGKILL x10: {lost_in_flight} messages were in flight at the kills; "
            f"recovery times {min(clock.times):.1f}-{max(clock.times):.1f}s; "
            f"final drain {drained:.1f}s"
        )
    finally:
        clock.close()
        client.close()


def test_ten_thousand_lost_at_once_are_all_back_within_the_bound(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    """A long queue is never touched; 10,000 messages taken off it and never confirmed (what
    a kill leaves) are all back in the queue within AGENTSTORE_RECOVERY_AFTER_S + 2 s."""
    work = Workload(keys=5000, versions=1, messages=15000, conversations=50)
    client = redis.Redis.from_url(broker)
    # Consumes another queue: its reaper runs, and what it pushes back stays in view.
    reaper_only = start_worker(broker, database, queue="agentstore.none")
    with producer(broker, database) as prod:
        work.publish(prod)
        wait_until("a reaper round", lambda: client.exists(keys.REAPER_LOCK_KEY) > 0, 10, 0.01)
        time.sleep(RECOVERY_AFTER_S + 1)
        assert client.llen(keys.QUEUE) == work.total
        assert client.hlen(keys.OUT_SINCE_KEY) == 0, "nothing queued is seen as lost"

        client.rpop(keys.QUEUE, 10_000)  # the oldest: 5,000 states, 5,000 messages
        back = wait_until(
            "all back in the queue", lambda: client.llen(keys.QUEUE) >= work.total, 30, 0.01
        )
        assert back <= RECOVERY_AFTER_S + 2
        assert client.llen(keys.QUEUE) == work.total, "each pushed back once"
        assert client.hlen(keys.OUT_SINCE_KEY) == 0, "none left to push back again"
        # Logged once the round's last chunk has returned: just after they are all back.
        wait_until("the reaper's log line", lambda: "republished" in reaper_only.log(), 10)
        reaper_only.stop()
        start_worker(broker, database)
        prod.wait(timeout=120)
        work.check(prod)
    assert DeadLetters(broker).count() == 0
    print(f"\n10,000 lost at once: all back in the queue {back:.1f}s after")
    client.close()


def _terminate_backends(database: str) -> int:
    name = options(database)["dbname"]
    killed = rows(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    return sum(1 for (ok,) in killed if ok)


def test_terminated_database_connections_are_retried(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    work = Workload(keys=500, versions=4, messages=1000)
    client = redis.Redis.from_url(broker)
    with producer(broker, database) as prod:
        work.publish(prod)
        # One pooled connection per process: the store replaces a killed connection once per
        # pooled connection, so a small pool lets the storm reach the worker's own retry.
        worker = start_worker(broker, database, POSTGRES_POOL_MAX="1", **SLOW)
        terminated = 0
        # A storm first: connections killed faster than the store's own one reconnect can
        # absorb, until the worker's retry-with-backoff has visibly taken over.
        wait_until("progress", lambda: pending(client) <= work.total - 200, 60, 0.005)
        storm_end = time.monotonic() + 5
        while "transient failure" not in worker.log() and time.monotonic() < storm_end:
            terminated += _terminate_backends(database)
            time.sleep(0.002)
        for _ in range(5):
            before = pending(client)
            if before == 0:
                break  # drained already: waiting for 200 more would wait forever
            target = max(0, before - 200)
            wait_until("progress", pending_at_most(client, target), 60, 0.005)
            terminated += _terminate_backends(database)
        prod.wait(timeout=120)
        work.check(prod)
    assert terminated >= 5
    assert DeadLetters(broker).count() == 0
    retried = worker.log().count("transient failure")
    assert retried >= 1, "the worker's own retry path was exercised"
    print(f"\npg_terminate_backend: {terminated} connections killed, {retried} batch retries")
    client.close()


def test_unreachable_broker_raises_publish_error_within_the_timeout() -> None:
    with Producer(broker_url=f"redis://:pw@127.0.0.1:{free_port()}/0", publish_timeout=2) as prod:
        started = time.monotonic()
        with pytest.raises(PublishError, match=r"127\.0\.0\.1"):
            prod.save_state("agent", "s", {"x": 1})
        assert time.monotonic() - started < 2.0


@pytest.fixture
def aof_server(start_redis: RedisFactory) -> RedisServer:
    return start_redis(aof="always")


def test_broker_restarted_mid_drain_loses_nothing(
    aof_server: RedisServer, database: str, start_worker: WorkerFactory
) -> None:
    work = Workload(keys=500, versions=4, messages=1000)
    client = aof_server.client()
    with producer(aof_server.url, database) as prod:
        work.publish(prod)
        start_worker(aof_server.url, database, **SLOW)
        wait_until("progress", lambda: pending(client) <= work.total - 1000, 60, 0.005)
        aof_server.kill()
        time.sleep(1.0)
        aof_server.start()
        prod.wait(timeout=120)
        work.check(prod)
    assert DeadLetters(aof_server.url).count() == 0
    client.close()


def test_sigterm_mid_drain_finishes_the_batch_and_loses_nothing(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    work = Workload(keys=300, versions=4, messages=600)
    client = redis.Redis.from_url(broker)
    with producer(broker, database) as prod:
        work.publish(prod)
        worker = start_worker(broker, database, **SLOW)
        wait_until("progress", lambda: pending(client) <= work.total - 300, 60, 0.005)
        worker.proc.send_signal(signal.SIGTERM)
        # Generous: a loaded CI machine stretches the warm shutdown, never the data checks.
        assert worker.proc.wait(timeout=90) == 0, worker.log()[-2000:]
        assert "Warm shutdown" in worker.log()
        assert pending(client) > 0, "stopped mid-drain"
        start_worker(broker, database)
        prod.wait(timeout=60)
        work.check(prod)
    assert DeadLetters(broker).count() == 0
    client.close()
