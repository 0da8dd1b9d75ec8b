"""Chaos soak: producers save through a Sentinel cluster (a primary, two replicas, three
Sentinels; `AGENTSTORE_PUBLISH_REPLICAS=1`) while workers are SIGKILLed, their database
connections terminated, the primary SIGKILLed (Sentinel fails over), a replica restarted and
the (private) PostgreSQL server restarted; afterwards nothing acknowledged may be lost,
stale, duplicated or out of order.

`SOAK_S` sets how long faults are injected (default 75 s; a little longer if some kind of
fault has not come up yet: the whole test stays under 3 minutes); `SOAK_SEED` replays a run;
`AGENTSTORE_WRITE_RESULTS=1` writes `docs/RELIABILITY.md`. `make soak SOAK_S=600` is the
long run.
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

from agentstore_cli.launch import PostgresServer, SentinelCluster
from broker import keys
from broker.deadletters import DeadLetters
from tests.plugin import ClusterFactory, WorkerFactory
from tests.reliability import results
from tests.reliability.audit import audit
from tests.reliability.chaos import FAULTS, Chaos, Cluster
from tests.reliability.load import ProducerThread, has_buffered_mode
from tests.reliability.recovery import Probe, summary

SOAK_S = float(os.environ.get("SOAK_S", "75"))
SEED = os.environ.get("SOAK_SEED") or secrets.token_hex(4)
PRODUCERS = 4
BUFFERED_PRODUCERS = 2 if has_buffered_mode() else 0
RATE = 60.0  # ops/s per producer thread: ~240/s, well within what two workers drain
WORKERS = 2
GAP_S = (1.5, 4.0)  # after a fault has settled, before the next; every other one is a kill
MIN_KILLS = max(4, int(SOAK_S // 30))
OVERTIME_S = 60.0  # past SOAK_S, at most, for a kind of fault that has not come up yet
STEP_TIMEOUT_S = 60.0  # for a marker save to be published, then applied, after a fault
DRAIN_TIMEOUT_S = 240.0
# The setting that promises no loss across a failover: a save returns once a replica has it.
PRODUCER_SETTINGS = {"agentstore_publish_replicas": 1}
# Recovery of a killed worker's messages after 2 s instead of 20 s: many kills fit in a run.
WORKER_ENV = {
    "AGENTSTORE_RECOVERY_AFTER_S": "2",
    "AGENTSTORE_REAPER_INTERVAL_S": "0.5",
    "AGENTSTORE_BATCH_MAX": "50",
    "AGENTSTORE_BATCH_WAIT_MS": "2",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(int(SOAK_S + OVERTIME_S + DRAIN_TIMEOUT_S) + 240),
]


@pytest.fixture(scope="module")
def soak_results() -> Iterator[list[results.ScenarioResult]]:
    started = datetime.datetime.now(datetime.UTC)
    collected: list[results.ScenarioResult] = []
    yield collected
    if results.should_write() and collected:
        command = os.environ.get("SOAK_COMMAND", f"make soak SOAK_S={SOAK_S:g}")
        path = results.write(collected, started, command)
        print(f"\nwrote {path}")


def _drain(cluster: Cluster, timeout: float) -> float:
    client = cluster.client()
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
    start_sentinel_cluster: ClusterFactory,
    private_postgres: PostgresServer,
    start_worker: WorkerFactory,
    soak_results: list[results.ScenarioResult],
) -> None:
    print(f"\nsoak: SOAK_S={SOAK_S:g} SOAK_SEED={SEED} (set SOAK_SEED to replay the faults)")
    broker: SentinelCluster = start_sentinel_cluster()
    url, database = broker.url, private_postgres.url
    cluster = Cluster(
        broker, private_postgres, lambda: start_worker(url, database, **WORKER_ENV), WORKERS
    )
    cluster.start()
    stop = threading.Event()
    producers = [
        ProducerThread(i, url, RATE, SEED, stop, producer_options=PRODUCER_SETTINGS)
        for i in range(PRODUCERS)
    ]
    producers += [
        ProducerThread(
            PRODUCERS + i, url, RATE, SEED, stop, buffered=True, producer_options=PRODUCER_SETTINGS
        )
        for i in range(BUFFERED_PRODUCERS)
    ]
    probe = Probe(url, database, STEP_TIMEOUT_S, **PRODUCER_SETTINGS)
    chaos = Chaos(
        cluster,
        probe,
        random.Random(f"{SEED}-chaos"),
        SOAK_S,
        GAP_S,
        min_kills=MIN_KILLS,
        overtime=OVERTIME_S,
    )
    for thread in producers:
        thread.start()
    chaos.start()
    try:
        chaos.join(timeout=SOAK_S + OVERTIME_S + 3 * STEP_TIMEOUT_S)
    finally:
        stop.set()
        chaos.stop()
        probe.close()
        for thread in producers:
            thread.join(timeout=30)
    for at, kind, detail in chaos.events:
        print(f"soak: {at:6.1f}s {kind}: {detail}")
    assert chaos.error is None, f"the chaos itself failed (seed {SEED}): {chaos.error!r}"
    errors = [p.error for p in producers if p.error is not None]
    assert not errors, f"producer threads failed (seed {SEED}): {errors!r}"

    cluster.replace_dead()
    drain_s = _drain(cluster, DRAIN_TIMEOUT_S)
    client = cluster.client()
    dead_letters = DeadLetters(client=client).count()
    client.close()
    saves = [s for p in producers for s in p.saves] + probe.saves
    result = audit(saves, database)
    soak_results.append(
        results.ScenarioResult(
            name="postgres + Sentinel: kills, connection kills, failovers, restarts",
            description=(
                "Durable producers (and buffered ones when `Producer` has `linger_ms`) save "
                "all four kinds through a Sentinel cluster (a primary, two replicas, three "
                "Sentinels, no persistence) with `AGENTSTORE_PUBLISH_REPLICAS=1`, the setting "
                "that promises no loss across a failover (a save returns once a replica has "
                "it too); two workers apply them to a PostgreSQL server of the test's own. "
                "Faults: SIGKILL of a worker's process group (then a new worker); "
                "`pg_terminate_backend` of the workers' connections (single or a burst of "
                "three); SIGKILL of the primary Redis (the Sentinels promote a replica, the "
                "killed server comes back empty as a replica of the new primary); SIGKILL "
                "and restart of a replica; PostgreSQL server restart (`pg_ctl stop -m fast`, "
                "down 0.5-2 s, start). Every other fault is a worker kill; the others come "
                "in shuffled rounds. Each fault is left to settle (a new worker ready, "
                "replicas online again) before the next."
            ),
            parameters={
                "duration_s": f"{SOAK_S:g}",
                "seed": SEED,
                "durable producer threads": PRODUCERS,
                "buffered producer threads": BUFFERED_PRODUCERS,
                "rate per producer thread": f"{RATE:g} ops/s",
                "workers": f"{WORKERS} x concurrency 2",
                "seconds between faults": f"{GAP_S[0]}-{GAP_S[1]} (uniform)",
                "AGENTSTORE_PUBLISH_REPLICAS": PRODUCER_SETTINGS["agentstore_publish_replicas"],
                **WORKER_ENV,
            },
            audit=result,
            faults={kind: chaos.counts[kind] for kind in FAULTS},
            recoveries=dict(chaos.recoveries),
            publish_failures=sum(p.publish_failures for p in producers),
            dead_letters=dead_letters,
            unexpected_worker_exits=cluster.unexpected_exits,
            in_flight_at_kills=cluster.in_flight_at_kills,
            acked_by_mode={
                **{
                    mode: sum(s.acked for p in producers if p.buffered == buffered for s in p.saves)
                    for mode, buffered in (("durable", False), ("buffered", True))
                },
                "recovery markers": len(probe.saves),
            },
            drain_s=drain_s,
        )
    )
    print(
        f"soak: {result.sent} sent, {result.acked} acknowledged, {result.applied} applied, "
        f"faults {dict(chaos.counts)}, {cluster.in_flight_at_kills} messages in flight at "
        f"the kills, drained in {drain_s:.1f}s"
    )
    for kind, recoveries in chaos.recoveries.items():
        publish, apply = summary(recoveries)
        print(f"soak: {kind} x{len(recoveries)}: first publish {publish}, first apply {apply}")
    assert result.clean, f"seed {SEED}: {result}\n" + "\n".join(result.problems)
    assert dead_letters == 0
    assert result.applied == result.acked
    assert cluster.unexpected_exits == 0, "a worker exited without being killed"
    assert chaos.covered(), f"not every kind of fault came up: {dict(chaos.counts)}"
