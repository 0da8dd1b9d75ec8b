"""The queue path end to end: producer -> Redis -> `celery -A worker worker` -> PostgreSQL."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import redis

from broker import keys, wire
from broker.deadletters import DeadLetters
from broker.publisher import Publisher
from producer import DeadLetteredError
from storage import PostgreSQLClient
from tests.integration.helpers import execute, pending, producer, rows, wait_until
from tests.plugin import ROOT, WorkerFactory
from tests.queued import op_id_of

THREADS = 8
SAVES = 10_000


def test_ten_thousand_saves_of_every_kind_from_eight_threads(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database)
    expected_state: dict[tuple[str, str], dict[str, Any]] = {}
    expected_task: dict[tuple[str, str], dict[str, Any]] = {}
    expected_history: dict[str, list[dict[str, Any]]] = {}
    expected_txns: dict[str, dict[str, dict[str, Any]]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    with producer(broker, database) as prod:

        def run(t: int) -> None:
            rng = random.Random(t)
            states: dict[tuple[str, str], dict[str, Any]] = {}
            tasks: dict[tuple[str, str], dict[str, Any]] = {}
            history: dict[str, list[dict[str, Any]]] = {}
            txns: dict[str, dict[str, dict[str, Any]]] = {}
            try:
                for n in range(SAVES // THREADS):
                    kind = n % 4
                    if kind == 0:
                        key = (f"agent-{t}", f"state-{rng.randrange(40)}")
                        states[key] = {"n": n, "thread": t}
                        prod.save_state(*key, states[key])
                    elif kind == 1:
                        key = (f"agent-{t}", f"task-{rng.randrange(40)}")
                        tasks[key] = {"n": n, "status": "running"}
                        prod.save_task(*key, tasks[key])
                    elif kind == 2:
                        conv = f"conv-{t}-{rng.randrange(5)}"
                        message = {"n": n, "role": "user", "text": f"message {n}"}
                        history.setdefault(conv, []).append(message)
                        prod.save_conversation(conv, message)
                    else:
                        case = f"case-{t}-{rng.randrange(5)}"
                        batch: list[dict[str, Any]] = [
                            {"id": f"tx-{rng.randrange(30)}", "n": n} for _ in range(2)
                        ]
                        batch = list({tx["id"]: tx for tx in batch}.values())
                        for tx in batch:
                            txns.setdefault(case, {})[tx["id"]] = tx  # first save fixes order
                        prod.save_transactions(case, batch)
            except BaseException as exc:
                errors.append(exc)
            with lock:
                expected_state.update(states)
                expected_task.update(tasks)
                expected_history.update(history)
                expected_txns.update(txns)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        prod.wait(timeout=120)

        for (agent, state_id), state in expected_state.items():
            assert prod.get_state(agent, state_id) == state
        for (agent, task_id), task in expected_task.items():
            assert prod.get_task(agent, task_id) == task
        for conv, messages in expected_history.items():
            assert prod.get_conversation_history(conv) == messages
        for case, by_id in expected_txns.items():
            got = prod.get_transactions(case)
            assert [tx["id"] for tx in got] == list(by_id), "identity and first-save order"
            assert got == list(by_id.values()), "each transaction at its newest content"
    assert rows(database, "SELECT count(*) FROM conversations") == [
        (sum(map(len, expected_history.values())),)
    ]


def test_wait_returns_only_once_reads_see_the_data(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database)
    with producer(broker, database) as prod:
        for i in range(50):
            op_id = op_id_of(prod.save_state("agent", f"s{i}", {"i": i}))
            conv_op = op_id_of(prod.save_conversation("conv", {"i": i}))
            prod.wait([op_id, conv_op], timeout=30)
            assert prod.get_state("agent", f"s{i}") == {"i": i}
            assert prod.get_conversation_history("conv", limit=1) == [{"i": i}]
        prod.save_task("agent", "t", {"done": True})
        prod.wait(timeout=30)
        assert prod.get_task("agent", "t") == {"done": True}
        assert prod.unconfirmed == 0


def test_poison_ops_are_dead_lettered_the_rest_applied_and_replay_works(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    PostgreSQLClient(postgres_connection_string=database).close()  # creates the schema
    # A cause that can be fixed: the database refuses this one op until the check goes.
    execute(
        database,
        "ALTER TABLE agent_states ADD CONSTRAINT no_poison CHECK (state_id <> 'poison')",
    )
    with producer(broker, database) as prod:
        good = [op_id_of(prod.save_state("agent", f"ok{i}", {"i": i})) for i in range(40)]
        poisoned = op_id_of(prod.save_state("agent", "poison", {"fails": "until fixed"}))
        more = [op_id_of(prod.save_state("agent", f"ok{i}", {"i": i})) for i in range(40, 80)]
        invalid_id = "0123456789abcdef0123456789abcdef"
        invalid = json.dumps(
            {"op": "save_state", "id": invalid_id, "version": "1", "args": {"agent_id": ""}}
        )
        publisher = Publisher(broker)
        publisher.publish([(invalid_id, wire.build_message(invalid_id, [invalid]))])
        publisher.close()
        start_worker(broker, database)

        try:
            prod.wait([*good, poisoned, *more], timeout=60)
            raise AssertionError("the poisoned op must be reported")
        except DeadLetteredError as exc:
            assert exc.op_id == poisoned and "no_poison" in exc.error
        prod.wait(good + more, timeout=30)
        for i in range(80):
            assert prod.get_state("agent", f"ok{i}") == {"i": i}
        try:
            prod.wait([invalid_id], timeout=30)
            raise AssertionError("the invalid op must be reported")
        except DeadLetteredError as exc:
            assert "agent_id" in exc.error

        dlq = DeadLetters(broker)
        record = dlq.get(poisoned)
        assert record is not None and record["message_id"] == poisoned
        assert record["attempts"] >= 1 and record["op"]["args"]["state_id"] == "poison"
        assert dlq.count() == 2

        execute(database, "ALTER TABLE agent_states DROP CONSTRAINT no_poison")
        assert dlq.replay([poisoned]) == 1
        prod.wait([poisoned], timeout=30)
        assert prod.get_state("agent", "poison") == {"fails": "until fixed"}
        assert dlq.get(poisoned) is None and dlq.count() == 1
        dlq.close()


def _pickle_bomb(path: Path) -> bytes:
    # Protocol-0 pickle of `open(path, "w")`, written by hand: unpickling it creates the file.
    return b"c__builtin__\nopen\n(V" + str(path).encode() + b"\nVw\ntR."


def test_a_pickle_message_is_refused_and_never_unpickled(
    broker: str, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    worker = start_worker(broker, database)
    r = redis.Redis.from_url(broker)
    for mid in ("pickle1", "pickle2"):
        message = json.loads(wire.build_message(mid, ["{}"]))
        message["content-type"] = "application/x-python-serialize"
        message["content-encoding"] = "binary"
        message["body"] = base64.b64encode(_pickle_bomb(target)).decode()
        r.lpush(keys.QUEUE, json.dumps(message))
    with producer(broker, database) as prod:
        op_id = op_id_of(prod.save_state("agent", "after", {"still": "running"}))
        prod.wait([op_id], timeout=30)
        assert prod.get_state("agent", "after") == {"still": "running"}
    dlq = DeadLetters(broker)
    wait_until("both dead letters", lambda: dlq.count() == 2, 10)
    for mid in ("pickle1", "pickle2"):
        record = dlq.get(mid)
        assert record is not None
        assert "x-python-serialize" in record["error"] or "ContentDisallowed" in record["error"]
    dlq.close()
    assert not target.exists()
    assert worker.alive() and pending(r) == 0
    r.close()


def test_celery_inspect_ping_works(broker: str, database: str, start_worker: WorkerFactory) -> None:
    worker = start_worker(broker, database)
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout", "5"],
        cwd=ROOT,
        env={"CELERY_BROKER_URL": broker, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "pong" in out.stdout, out.stdout + out.stderr
    assert worker.alive()
