"""A real worker's /metrics, read with prometheus-client's own parser and by a real Prometheus:
the numbers match what was published, and a SIGKILLed child is neither lost nor counted twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from agentstore_cli.launch import CeleryWorker as Worker
from agentstore_cli.launch import free_port
from broker import keys, wire
from broker.publisher import Publisher
from tests.integration.helpers import pending, pending_at_most, producer, wait_until
from tests.integration.scrape import by_label, scrape, scrape_text, total, wait_counted
from tests.plugin import WorkerFactory
from tests.services import unavailable

SLOW = {"AGENTSTORE_BATCH_MAX": "20", "AGENTSTORE_BATCH_WAIT_MS": "0"}


def publish(broker: str, database: str, states: int, messages: int, poison: int) -> None:
    """`states` state saves and `messages` conversation messages through a Producer, and
    `poison` ops no worker can parse, each in a message of its own."""
    with producer(broker, database) as prod:
        for i in range(states):
            prod.save_state("agent", f"s{i}", {"i": i})
        for i in range(messages):
            prod.save_conversation("conv", {"i": i})
    publisher = Publisher(broker)
    try:
        for _ in range(poison):
            mid = wire.new_message_id()
            bad = json.dumps({"op": "drop_everything", "id": mid, "args": {}, "version": "1"})
            publisher.publish([(mid, wire.build_message(mid, [bad]))])
    finally:
        publisher.close()


def children(worker: Worker) -> list[int]:
    path = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children")
    return [int(pid) for pid in path.read_text().split()]


def test_metrics_count_every_op_once(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    states, messages, poison = 300, 200, 7
    good = states + messages
    publish(broker, database, states, messages, poison)
    port = free_port()
    start_worker(broker, database, AGENTSTORE_METRICS_PORT=str(port))
    client = redis.Redis.from_url(broker)
    try:
        wait_until("the drain", lambda: pending(client) == 0, 120)
    finally:
        client.close()
    wait_counted(port, good)
    samples = scrape(port)
    applied = by_label(samples, "agentstore_ops_applied_total", "kind")
    assert applied == {"state": states, "conversation": messages}
    assert by_label(samples, "agentstore_ops_applied_total", "backend") == {"postgres": good}
    assert total(samples, "agentstore_ops_stale_total") == 0
    assert by_label(samples, "agentstore_dead_letters_total", "reason") == {"invalid": poison}
    assert samples[("agentstore_dead_letters", ())] == poison
    assert samples[("agentstore_queue_depth", ())] == 0
    assert samples[("agentstore_queue_ops", ())] == 0
    assert samples[("agentstore_pending_oldest_seconds", ())] == 0
    assert total(samples, "agentstore_apply_lag_seconds_count") == good
    assert total(samples, "agentstore_batch_ops_sum") == good
    assert samples[("agentstore_worker_processes", ())] == 2
    assert samples[("agentstore_broker_up", ())] == 1
    assert total(samples, "process_resident_memory_bytes") > 0


def test_a_sigkilled_child_is_neither_lost_nor_counted_twice(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    states, poison = 3000, 5
    publish(broker, database, states, 0, poison)
    port = free_port()
    client = redis.Redis.from_url(broker)
    try:
        worker = start_worker(broker, database, AGENTSTORE_METRICS_PORT=str(port), **SLOW)
        for _ in range(3):
            before = pending(client)
            wait_until("progress", pending_at_most(client, before - 150), 60, 0.005)
            # Mid-batch: messages out of the queue beyond the two delivered tasks were taken
            # by a batch (RPOP), and only the reaper brings them back once their child dies.
            wait_until("a batch in flight", lambda: _taken(client) > 2, 60, 0.001)
            for pid in children(worker):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        wait_until("the drain", lambda: pending(client) == 0, 180)
    finally:
        client.close()
    wait_until("dead children's gauges dropped", lambda: _processes(port) == 2, 30, 0.2)
    counted = wait_counted(port, states)
    text = scrape_text(port)
    # The scrape of a drain with SIGKILLs in it, for the record (`pytest -s` shows it).
    print("\n".join(line for line in text.splitlines() if line.startswith(_SHOWN)))
    samples = scrape(port)
    assert total(samples, "agentstore_reaper_republished_total") > 0
    assert total(samples, "agentstore_dead_letters_total") == poison
    assert samples[("agentstore_dead_letters", ())] == poison
    assert samples[("agentstore_queue_depth", ())] == 0
    # Ops committed by a child killed before its settle are counted by the redelivery
    # ("held" at their version), once; a redelivered copy of a settled message counts nothing.
    assert counted == states, "none lost, none twice"
    assert total(samples, "agentstore_ops_applied_total") == states
    assert total(samples, "agentstore_ops_stale_total") == 0
    assert total(samples, "agentstore_apply_lag_seconds_count") == states


_SHOWN = (
    "agentstore_ops_applied_total",
    "agentstore_ops_stale_total",
    "agentstore_dead_letters",
    "agentstore_queue_depth",
    "agentstore_reaper_republished_total",
    "agentstore_worker_processes",
    "agentstore_apply_lag_seconds_count",
)


def _taken(client: redis.Redis) -> int:
    """Messages published, not yet settled and not in the queue: held by the workers."""
    pipe = client.pipeline(transaction=True)
    pipe.zcard(keys.PENDING_KEY)
    pipe.llen(keys.QUEUE)
    held, queued = pipe.execute()
    return int(held) - int(queued)


def _processes(port: int) -> float:
    return scrape(port)[("agentstore_worker_processes", ())]


@contextmanager
def prometheus_server(target_port: int, directory: Path) -> Iterator[int]:
    """Our own `prometheus` scraping 127.0.0.1:`target_port` every second; yields its port."""
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus is not on PATH (Debian: apt-get install prometheus)")
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: agentstore\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    port = free_port()
    log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
    except OSError:
        return []  # not listening yet
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def test_a_real_prometheus_scrapes_the_worker(
    broker: str, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    publish(broker, database, 50, 0, 0)
    port = free_port()
    start_worker(broker, database, AGENTSTORE_METRICS_PORT=str(port))
    client = redis.Redis.from_url(broker)
    try:
        wait_until("the drain", lambda: pending(client) == 0, 60)
    finally:
        client.close()
    with prometheus_server(port, tmp_path) as prom:
        expr = "sum(agentstore_ops_applied_total)"
        wait_until("Prometheus to scrape the worker", lambda: bool(_query(prom, expr)), 60, 0.5)
        deadline = time.monotonic() + 30
        while True:
            value = float(_query(prom, expr)[0]["value"][1])  # type: ignore[index]
            if value == 50 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert value == 50
        up = _query(prom, 'up{job="agentstore"}')
        assert up and up[0]["value"][1] == "1"  # type: ignore[index]


def test_json_logs_carry_ids_and_sizes_but_no_payload(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    with producer(broker, database) as prod:
        prod.save_state("agent", "s", {"secret_payload": "do-not-log-me"})
    publish(broker, database, 0, 0, 1)
    worker = start_worker(broker, database, AGENTSTORE_LOG_FORMAT="json")
    client = redis.Redis.from_url(broker)
    try:
        wait_until("the drain", lambda: pending(client) == 0, 60)
    finally:
        client.close()
    worker.stop()
    text = worker.log()
    assert "do-not-log-me" not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    batches = [e for e in entries if e["message"].startswith("applied batch")]
    assert batches and all("batch_ops" in e and "duration_ms" in e for e in batches)
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    dead = [e for e in entries if e["message"].startswith("dead-lettered op")]
    assert len(dead) == 1 and dead[0]["level"] == "ERROR" and dead[0]["message_id"]
