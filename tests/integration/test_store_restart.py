"""The store goes away mid-drain and comes back: the running workers retry with backoff (then
leave their batch for redelivery), resume on their own, and every save lands exactly once,
in order, none stale, no dead letters.

PostgreSQL: a server of the test's own is really stopped and started again (every session
ends, connections are refused meanwhile). Cosmos DB: the in-memory test server would lose its
data on a restart, so its port is closed instead (a proxy refusing connections), which is
what clients of a Cosmos DB outage see.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack

import pytest
import redis

from agentstore_cli.launch import CeleryWorker, PostgresServer
from broker.deadletters import DeadLetters
from producer import Producer
from storage import load_settings
from tests.integration.helpers import Workload, pending, pending_at_most, wait_until
from tests.plugin import WorkerFactory
from tests.proxy import cosmos_behind_proxy

pytestmark = pytest.mark.timeout(90)  # each test; ~20-40 s seen on a loaded machine

# Small batches and no batch wait: many batches in flight when the store goes away.
SLOW = {"AGENTSTORE_BATCH_MAX": "20", "AGENTSTORE_BATCH_WAIT_MS": "0"}
DOWN_S = 3.0  # how long the store stays down once it is down
WORKERS = 2
PROGRESS = 300  # saves confirmed before the outage


def _outage_mid_drain(
    broker: str,
    prod: Producer,
    work: Workload,
    start_workers: Callable[[], None],
    down: Callable[[], None],
    up: Callable[[], None],
) -> tuple[float, float]:
    """Publish `work`, start the workers, take the store `down()` early in the drain and
    bring it `up()` DOWN_S later; wait for everything. Returns (seconds the store was
    unreachable, seconds from its return to the first message applied after it)."""
    client = redis.Redis.from_url(broker)
    try:
        work.publish(prod)
        start_workers()
        # Triggered by progress, not by a timer: the first saves confirmed, most still queued.
        wait_until("progress", pending_at_most(client, work.total - PROGRESS), 60, 0.005)
        went_down = time.monotonic()
        down()
        time.sleep(DOWN_S)  # the outage itself, not a wait for something
        left = pending(client)
        assert left > 0, "the queue drained before the store went down: nothing was tested"
        up()
        came_back = time.monotonic()
        resumed = wait_until(
            "the first apply after the outage", lambda: pending(client) < left, 60, 0.01
        )
        prod.wait(timeout=60)
        work.check(prod)
    finally:
        client.close()
    return came_back - went_down, resumed


def _start_together(
    start_worker: WorkerFactory, broker: str, database: str, **env: str
) -> list[CeleryWorker]:
    """WORKERS workers started at once: none drains the queue alone for long."""
    workers = [start_worker(broker, database, False, **SLOW, **env) for _ in range(WORKERS)]
    for worker in workers:
        worker.wait_ready()
    return workers


def _report(store: str, outage_s: float, resumed_s: float, logs: str) -> tuple[int, int]:
    """Print how it went; returns (batch retries, batches left for redelivery)."""
    retried, gave_up = logs.count("transient failure"), logs.count("store unavailable after")
    assert retried + gave_up > 0, "the workers never saw the outage"
    print(
        f"\n{store} outage of {outage_s:.1f}s mid-drain: first apply {resumed_s:.2f}s after it "
        f"ended; {retried} batch retries, {gave_up} batches left for redelivery"
    )
    return retried, gave_up


# The outage outlasts the second budget: batches are given up on, left for the reaper to
# hand out again (AGENTSTORE_RECOVERY_AFTER_S, 3 s in tests), and applied after the restart.
RETRY_BUDGETS = {
    "retried": {},
    "redelivered": {"AGENTSTORE_RETRY_TRIES": "3", "AGENTSTORE_RETRY_MAX_S": "1"},
}


@pytest.mark.parametrize("budget", RETRY_BUDGETS)
def test_a_postgresql_restart_mid_drain_is_waited_out(
    broker: str, private_postgres: PostgresServer, start_worker: WorkerFactory, budget: str
) -> None:
    database = private_postgres.url  # the server is ours: its own database will do
    work = Workload(keys=500, versions=4, messages=2000)
    workers: list[CeleryWorker] = []

    def start_workers() -> None:
        workers.extend(_start_together(start_worker, broker, database, **RETRY_BUDGETS[budget]))

    with Producer(broker_url=broker, postgres_connection_string=database) as prod:
        outage, resumed = _outage_mid_drain(
            broker, prod, work, start_workers, private_postgres.stop, private_postgres.start
        )
    assert DeadLetters(broker).count() == 0
    assert all(w.alive() for w in workers), "the workers resumed without being restarted"
    logs = "".join(w.log() for w in workers)
    _, gave_up = _report(f"PostgreSQL restart ({budget})", outage, resumed, logs)
    if budget == "redelivered":
        assert gave_up > 0, "no batch was left for redelivery: that path was not tested"


def test_a_cosmos_db_outage_mid_drain_is_waited_out(
    broker: str, start_worker: WorkerFactory
) -> None:
    pytest.importorskip("azure.cosmos")
    work = Workload(keys=200, versions=4, messages=800)
    workers: list[CeleryWorker] = []
    with ExitStack() as stack:
        server, proxy = cosmos_behind_proxy(stack)
        cosmos = {
            "cosmos_endpoint": f"https://127.0.0.1:{proxy.port}/",
            "cosmos_key": server.key,
            "cosmos_database_name": f"outage-{uuid.uuid4().hex[:12]}",
        }

        def start_workers() -> None:
            env = {k.upper(): v for k, v in cosmos.items()}
            workers.extend(_start_together(start_worker, broker, "", **env))

        settings = load_settings(postgres_connection_string=None, **cosmos)
        with Producer(settings, broker_url=broker) as prod:
            outage, resumed = _outage_mid_drain(
                broker, prod, work, start_workers, proxy.refuse, proxy.accept
            )
    assert DeadLetters(broker).count() == 0
    assert all(w.alive() for w in workers), "the workers resumed without being restarted"
    _report("Cosmos DB (connections refused)", outage, resumed, "".join(w.log() for w in workers))
