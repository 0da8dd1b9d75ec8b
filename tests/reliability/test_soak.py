"""Chaos soak: producers save while workers are SIGKILLed, their database connections
terminated and the broker restarted; afterwards nothing acknowledged may be lost, stale,
duplicated or out of order.

`SOAK_S` sets how long faults are injected (default 75 s: the whole test stays under 3
minutes with at least 5 kills); `SOAK_SEED` replays a run; `AGENTSTORE_WRITE_RESULTS=1`
writes `docs/RELIABILITY.md`. `make soak SOAK_S=600` is the long run.
"""

from __future__ import annotations

import datetime
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator

import pytest

from agentstore_cli.launch import RedisServer
from broker import keys
from broker.deadletters import DeadLetters
from tests.plugin import WorkerFactory
from tests.reliability import results
from tests.reliability.audit import audit
from tests.reliability.chaos import KILL, Chaos, Cluster
from tests.reliability.load import ProducerThread, has_buffered_mode

SOAK_S = float(os.environ.get("SOAK_S", "75"))
SEED = os.environ.get("SOAK_SEED") or secrets.token_hex(4)
PRODUCERS = 4
BUFFERED_PRODUCERS = 2 if has_buffered_mode() else 0
RATE = 60.0  # ops/s per producer thread: ~240/s, well within what two workers drain
WORKERS = 2
GAP_S = (1.5, 4.0)  # between faults; every other fault is a worker kill
MIN_KILLS = max(5, int(SOAK_S // 30))
DRAIN_TIMEOUT_S = 240.0
# Recovery of a killed worker's messages after 2 s instead of 20 s: many kills fit in a run.
WORKER_ENV = {
    "AGENTSTORE_RECOVERY_AFTER_S": "2",
    "AGENTSTORE_REAPER_INTERVAL_S": "0.5",
    "AGENTSTORE_BATCH_MAX": "50",
    "AGENTSTORE_BATCH_WAIT_MS": "2",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_S) + DRAIN_TIMEOUT_S + 180)]


@pytest.fixture(scope="module")
def soak_results() -> Iterator[list[results.ScenarioResult]]:
    started = datetime.datetime.now(datetime.UTC)
    collected: list[results.ScenarioResult] = []
    yield collected
    if results.should_write() and collected:
        command = os.environ.get("SOAK_COMMAND", f"make soak SOAK_S={SOAK_S:g}")
        path = results.write(collected, started, command)
        print(f"\nwrote {path}")


def _drain(server: RedisServer, timeout: float) -> float:
    client = server.client()
    started = time.monotonic()
    try:
        while True:
            left = client.zcard(keys.PENDING_KEY) + client.llen(keys.QUEUE)
            if left == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{left} messages still pending {timeout:.0f}s after chaos")
            time.sleep(0.2)
    finally:
        client.close()


def test_chaos_soak_loses_nothing_acknowledged(
    aof_redis: RedisServer,
    database: str,
    start_worker: WorkerFactory,
    soak_results: list[results.ScenarioResult],
) -> None:
    print(f"\nsoak: SOAK_S={SOAK_S:g} SOAK_SEED={SEED} (set SOAK_SEED to replay the faults)")
    url = aof_redis.url
    cluster = Cluster(
        aof_redis, database, lambda: start_worker(url, database, **WORKER_ENV), WORKERS
    )
    cluster.start()
    stop = threading.Event()
    producers = [ProducerThread(i, url, RATE, SEED, stop) for i in range(PRODUCERS)]
    producers += [
        ProducerThread(PRODUCERS + i, url, RATE, SEED, stop, buffered=True)
        for i in range(BUFFERED_PRODUCERS)
    ]
    chaos = Chaos(cluster, random.Random(f"{SEED}-chaos"), SOAK_S, GAP_S)
    for thread in producers:
        thread.start()
    chaos.start()
    try:
        chaos.join(timeout=SOAK_S + 120)
    finally:
        stop.set()
        chaos.stop()
        for thread in producers:
            thread.join(timeout=30)
    assert chaos.error is None, f"the chaos itself failed (seed {SEED}): {chaos.error!r}"
    errors = [p.error for p in producers if p.error is not None]
    assert not errors, f"producer threads failed (seed {SEED}): {errors!r}"

    cluster.replace_dead()
    drain_s = _drain(aof_redis, DRAIN_TIMEOUT_S)
    dlq = DeadLetters(url)
    dead_letters = dlq.count()
    dlq.close()
    saves = [s for p in producers for s in p.saves]
    result = audit(saves, database)
    soak_results.append(
        results.ScenarioResult(
            name="postgres: kills, connection kills, broker restarts",
            description=(
                "Durable producers (and buffered ones when `Producer` has `linger_ms`) save "
                "all four kinds; two workers apply them to PostgreSQL. Faults: SIGKILL of a "
                "worker's process group (then a new worker), `pg_terminate_backend` of the "
                "workers' connections (single or a burst of three), SIGKILL and restart of "
                "the broker."
            ),
            parameters={
                "duration_s": f"{SOAK_S:g}",
                "seed": SEED,
                "durable producer threads": PRODUCERS,
                "buffered producer threads": BUFFERED_PRODUCERS,
                "rate per producer thread": f"{RATE:g} ops/s",
                "workers": f"{WORKERS} x concurrency 2",
                "seconds between faults": f"{GAP_S[0]}-{GAP_S[1]} (uniform)",
                **WORKER_ENV,
            },
            audit=result,
            faults=dict(chaos.counts),
            publish_failures=sum(p.publish_failures for p in producers),
            dead_letters=dead_letters,
            unexpected_worker_exits=cluster.unexpected_exits,
            in_flight_at_kills=cluster.in_flight_at_kills,
            acked_by_mode={
                mode: sum(s.acked for p in producers if p.buffered == buffered for s in p.saves)
                for mode, buffered in (("durable", False), ("buffered", True))
            },
            drain_s=drain_s,
        )
    )
    print(
        f"soak: {result.sent} sent, {result.acked} acknowledged, {result.applied} applied, "
        f"faults {dict(chaos.counts)}, {cluster.in_flight_at_kills} messages in flight at "
        f"the kills, drained in {drain_s:.1f}s"
    )
    assert result.clean, f"seed {SEED}: {result}\n" + "\n".join(result.problems)
    assert dead_letters == 0
    assert result.applied == result.acked
    assert cluster.unexpected_exits == 0, "a worker exited without being killed"
    assert chaos.counts[KILL] >= MIN_KILLS, f"only {chaos.counts[KILL]} kills in {SOAK_S:g}s"
