"""A worker whose database is unreachable waits for it, one log line per retry, and applies
everything once it is back: no traceback per message, no dead letters, no republish flood."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from broker.deadletters import DeadLetters
from storage import pg_url
from tests.integration.helpers import pending, producer, rows, wait_until
from tests.plugin import WorkerFactory
from tests.services import pg_admin

MESSAGES = 100
DOWN_S = 10.0


@pytest.fixture
def later_database(database: str) -> Iterator[tuple[str, str]]:
    """(URL, name) of a database that does not exist until the test creates it."""
    name = pg_url.database(database) + "_later"
    try:
        yield pg_url.with_database(database, name), name
    finally:
        admin = pg_admin()
        try:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()


def test_an_unreachable_store_is_waited_for_without_a_log_flood(
    broker: str, later_database: tuple[str, str], start_worker: WorkerFactory
) -> None:
    url, name = later_database
    worker = start_worker(
        broker,
        url,
        AGENTSTORE_RECOVERY_AFTER_S="2",
    )
    client = redis.Redis.from_url(broker)
    with producer(broker, url) as prod:
        for n in range(MESSAGES):
            prod.save_state("agent", f"s{n}", {"n": n})
        # Several retry budgets and recovery periods go by while the database is missing.
        time.sleep(DOWN_S)
        log = worker.log()
        assert "Traceback" not in log, log[-3000:]
        assert DeadLetters(broker).count() == 0
        assert pending(client) == MESSAGES, "nothing applied, nothing dropped"
        # Per retry budget (~3 s here) and process: a line per try, one on giving up, Celery's
        # two per task; then one per reaper round: ~35 here, at most ~55 in the fastest
        # rounds the backoff allows. Before: ~20 lines per message and round.
        lines = log.split(" ready.", 1)[1].count("\n")
        assert lines < MESSAGES, f"{lines} log lines for {MESSAGES} messages:\n{log[-3000:]}"
        admin = pg_admin()
        try:
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()
        wait_until("everything applied", lambda: pending(client) == 0, 90, 0.2)
    assert len(rows(url, "SELECT state_id FROM agent_states")) == MESSAGES
    assert DeadLetters(broker).count() == 0
    print(f"\n{lines} log lines while the store was down for {DOWN_S:g}s")
