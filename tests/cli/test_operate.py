"""`agentstore health`, `stats` and `dlq` against the real Redis, PostgreSQL and a worker."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg2
import redis
from prometheus_client.parser import text_string_to_metric_families

from agentstore_cli import operate
from agentstore_cli.launch import free_port
from broker import deadletters, keys, wire
from broker.publisher import Publisher
from storage.config import mask_url
from storage.ops import make_op, op_to_message
from storage.postgres_schema import MIGRATIONS
from tests.cli.conftest import REDIS_PASSWORD, Cli, open_store
from tests.plugin import WorkerFactory


def config(broker: str, pg_url: str | None = None) -> dict[str, str]:
    out = {"CELERY_BROKER_URL": broker}
    if pg_url:
        out["POSTGRES_CONNECTION_STRING"] = pg_url
    return out


def dead_letter(broker: str, op: dict[str, Any] | None = None, raw: str | None = None) -> str:
    """Store one dead letter as the worker does; returns its id."""
    client = redis.Redis.from_url(broker)
    now = time.time()
    if op is not None:
        key, record = deadletters.op_record(op, "store unreachable (test)", 6, now - 5, now, "m1")
    else:
        key, record = deadletters.message_record(raw or "junk", "not a task message", None, now)
    pipe = client.pipeline()
    deadletters.add(pipe, key, record, now)
    pipe.execute()
    client.close()
    return key


def save_state_op(agent: str, n: int) -> dict[str, Any]:
    args = {"agent_id": agent, "state_id": "s", "state": {"n": n}}
    return op_to_message(make_op("save_state", args))


def closed_broker() -> str:
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"


def test_health_stats_and_replay_with_a_worker_running(
    run: Cli, spare_redis_url: str, pg_url: str, start_worker: WorkerFactory
) -> None:
    start_worker(spare_redis_url, pg_url)
    env = config(spare_redis_url, pg_url)
    result = run(["health"], env)
    assert result.exit_code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["broker", "OK"],
        ["store", "OK"],
        ["workers", "OK"],
    ]
    assert "1 consuming 'agentstore'" in lines[2]
    assert f"PostgreSQL {mask_url(pg_url)} " in lines[1]

    stats = json.loads(run(["stats", "--json"], env).stdout)
    assert stats["workers"] == 1 and stats["queued"] == 0 and stats["applied_per_s"] == 0.0

    op = save_state_op("replayed-agent", 7)
    key = dead_letter(spare_redis_url, op)
    assert key == op["id"]
    result = run(["dlq", "replay", key], env)
    assert result.exit_code == 0 and "replayed 1 op(s)" in result.stdout
    with open_store({"POSTGRES_CONNECTION_STRING": pg_url}) as store:
        deadline = time.monotonic() + 15
        while store.get_state("replayed-agent", "s") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_state("replayed-agent", "s") == {"n": 7}
    assert run(["dlq", "list"], env).stdout == ""
    # The worker counts what it applied: the replayed op at least.
    assert int(redis.Redis.from_url(spare_redis_url).get(keys.APPLIED_KEY) or 0) >= 1


def test_health_fails_on_a_closed_broker_port_without_printing_its_password(
    run: Cli, pg_url: str
) -> None:
    began = time.monotonic()
    result = run(["health"], config(closed_broker(), pg_url))
    assert result.exit_code == 1
    broker, store, workers = result.stdout.splitlines()
    assert broker.startswith("broker   FAIL") and "redis://:***@127.0.0.1:" in broker
    assert store.startswith("store    OK")
    assert workers.startswith("workers  FAIL") and "broker unreachable" in workers
    assert time.monotonic() - began < 8


def test_health_reports_a_missing_schema_without_creating_it(
    run: Cli, spare_redis_url: str, pg_url: str
) -> None:
    result = run(["health", "--no-workers"], config(spare_redis_url, pg_url))
    assert result.exit_code == 0, result.stdout  # reachable: workers create it on first use
    store = result.stdout.splitlines()[1]
    assert (
        store.startswith("store    OK")
        and f"schema not migrated yet (0 of {len(MIGRATIONS)}" in store
    )
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert cur.fetchone() == (0,), "a read-only check created tables"
    finally:
        conn.close()
    open_store({"POSTGRES_CONNECTION_STRING": pg_url}).close()
    result = run(["health", "--no-workers"], config(spare_redis_url, pg_url))
    assert result.exit_code == 0 and "schema" not in result.stdout, result.stdout


def test_health_no_workers_checks_broker_and_store_only(
    run: Cli, spare_redis_url: str, pg_url: str
) -> None:
    result = run(["health", "--no-workers"], config(spare_redis_url, pg_url))
    assert result.exit_code == 0, result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["broker", "store"]
    # Without a worker the full check fails, after the two-second ping.
    result = run(["health"], config(spare_redis_url, pg_url))
    assert result.exit_code == 1
    assert "workers  FAIL  no worker answered a ping" in result.stdout
    unreachable = "postgresql://postgres:pg-S3cret-Pw@127.0.0.1:1/nowhere"
    result = run(["health", "--no-workers"], config(spare_redis_url, unreachable))
    assert result.exit_code == 1
    assert (
        "store    FAIL  cannot connect to PostgreSQL at postgresql://postgres:***@" in result.stdout
    )


def test_stats_counts_queued_pending_and_dead_letters(run: Cli, spare_redis_url: str) -> None:
    publisher = Publisher(spare_redis_url)
    ops = [json.dumps(save_state_op("a", n)) for n in range(3)]
    publisher.publish(
        [(wire.new_message_id(), wire.build_message(wire.new_message_id(), [o])) for o in ops]
    )
    publisher.close()
    dead_letter(spare_redis_url, save_state_op("b", 1))
    result = run(["stats", "--no-workers"], config(spare_redis_url))
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "queue depth           3  LLEN agentstore" in text
    assert "pending               3" in text
    assert "dead letters          1" in text
    assert "applied ops/s       0.0  sampled over the last second" in text
    numbers = json.loads(run(["stats", "--json", "--no-workers"], config(spare_redis_url)).stdout)
    assert 0 <= numbers.pop("oldest_pending_s") < 60
    assert numbers == {
        "queued": 3,
        "queued_ops": 3,
        "pending": 3,
        "unacked": 0,
        "dead_letters": 1,
        "workers": None,
        "applied_per_s": 0.0,
        "worker_names": None,
    }


def test_stats_prints_the_broker_gauges_for_prometheus(run: Cli, spare_redis_url: str) -> None:
    publisher = Publisher(spare_redis_url)
    ops = [json.dumps(save_state_op("p", n)) for n in range(5)]
    publisher.publish(
        [
            (mid, message)
            for mid, message, _ in wire.build_messages([f"op{n}" for n in range(5)], ops, max_ops=2)
        ]
    )
    publisher.close()
    result = run(["stats", "--format", "prometheus"], config(spare_redis_url))
    assert result.exit_code == 0, result.stderr
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(result.stdout)
        for s in family.samples
    }
    assert samples["agentstore_broker_up"] == 1
    assert samples["agentstore_queue_depth"] == 3, "5 ops in messages of at most 2"
    assert samples["agentstore_queue_ops"] == 5
    assert samples["agentstore_pending_messages"] == 3
    assert 0 <= samples["agentstore_pending_oldest_seconds"] < 60
    down = run(["stats", "--format", "prometheus"], config("redis://127.0.0.1:1/0"))
    assert down.exit_code == 0 and "agentstore_broker_up 0.0" in down.stdout


def test_stats_samples_the_workers_applied_counter(spare_redis_url: str) -> None:
    client = redis.Redis.from_url(spare_redis_url)
    stop = threading.Event()

    def apply_steadily() -> None:
        while not stop.wait(0.05):
            client.incrby(keys.APPLIED_KEY, 100)

    feeder = threading.Thread(target=apply_steadily)
    feeder.start()
    try:
        rate = operate.applied_per_s(client, 0.5)
    finally:
        stop.set()
        feeder.join()
    assert rate > 0, "a counter that grows shows a positive rate"
    assert operate.applied_per_s(client, 0.2) == 0.0, "a still counter shows none"


def test_dlq_list_show_replay_and_purge(run: Cli, spare_redis_url: str) -> None:
    env = config(spare_redis_url)
    first = dead_letter(spare_redis_url, save_state_op("a", 1))
    second = dead_letter(spare_redis_url, save_state_op("a", 2))
    junk = dead_letter(spare_redis_url, raw="not json at all")
    listing = run(["dlq", "list"], env)
    assert listing.exit_code == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [first, second, junk]
    assert "save_state  store unreachable (test)" in listing.stdout
    assert "malformed message" in listing.stdout
    assert "3 shown of 3 dead letter(s)" in listing.stderr
    as_json = [
        json.loads(line)
        for line in run(
            ["dlq", "list", "--json", "--limit", "1", "--offset", "1"], env
        ).stdout.splitlines()
    ]
    assert [r["id"] for r in as_json] == [second]

    shown = run(["dlq", "show", first], env)
    assert shown.exit_code == 0
    record = json.loads(shown.stdout)
    assert record["op"]["args"]["state"] == {"n": 1} and record["attempts"] == 6
    missing = run(["dlq", "show", "nope"], env)
    assert missing.exit_code == 1 and "no dead letter 'nope'" in missing.stderr

    assert run(["dlq", "replay", first, "--all"], env).exit_code == 2
    result = run(["dlq", "replay", first, "nope"], env)
    assert result.exit_code == 1 and "replayed 1 op(s)" in result.stdout
    assert "no dead letter(s) nope" in result.stderr
    client = redis.Redis.from_url(spare_redis_url)
    assert client.llen(keys.QUEUE) == 1
    result = run(["dlq", "replay", "--all"], env)
    assert result.exit_code == 0 and "replayed 1 op(s)" in result.stdout  # the junk stays
    assert client.llen(keys.QUEUE) == 2 and client.hkeys(keys.DLQ_KEY) == [junk.encode()]

    declined = run(["dlq", "purge", "--all"], env, input="n\n")
    assert declined.exit_code == 1 and "Delete 1 dead letter(s) for good?" in declined.stderr
    assert client.hlen(keys.DLQ_KEY) == 1
    accepted = run(["dlq", "purge", junk], env, input="y\n")
    assert accepted.exit_code == 0 and "purged 1 dead letter(s)" in accepted.stdout
    dead_letter(spare_redis_url, save_state_op("c", 3))
    assert run(["dlq", "purge", "--all", "--yes"], env).stdout == "purged 1 dead letter(s)\n"
    assert client.hlen(keys.DLQ_KEY) == 0 and client.zcard(keys.DLQ_INDEX_KEY) == 0
    client.close()


def test_broker_errors_are_one_line_without_the_password(run: Cli) -> None:
    for args in (["stats", "--no-workers"], ["dlq", "list"], ["dlq", "purge", "--all", "--yes"]):
        result = run(args, config(closed_broker()))
        assert result.exit_code == 1, args
        assert result.stderr.startswith("agentstore: broker: ConnectionError")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_health_answers_within_its_timeout_when_the_store_hangs(
    run: Cli, spare_redis_url: str
) -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        hanging = f"postgresql://postgres@127.0.0.1:{port}/db"
        began = time.monotonic()
        result = run(
            ["health", "--no-workers", "--timeout", "1.5"], config(spare_redis_url, hanging)
        )
        assert time.monotonic() - began < 3
    assert result.exit_code == 1
    assert "broker   OK" in result.stdout
    assert "store    FAIL  no answer within 1.5 s" in result.stdout
