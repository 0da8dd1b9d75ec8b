"""The buffered producer against a real redis-server and real workers: fork, exit, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import redis

from broker import keys, wire
from producer import Producer
from tests.integration.helpers import producer, rows
from tests.plugin import ROOT, WorkerFactory
from tests.queued import op_id_of

LONG = 60_000.0  # only flush/close/exit publish


def _queued_ops(client: redis.Redis) -> list[str]:
    raw = reversed(client.lrange(keys.QUEUE, 0, -1))
    return [op["id"] for m in map(wire.parse_message, raw) for op in m.ops]


def test_a_forked_child_starts_empty_and_never_resends_the_parents_buffer(broker: str) -> None:
    client = redis.Redis.from_url(broker)
    prod = Producer(broker_url=broker, linger_ms=LONG)
    parent_ids = [prod.save_state("parent", f"s{i}", {"i": i}) for i in range(100)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            assert prod.buffered == 0 and prod.unconfirmed == 0
            child_id = op_id_of(prod.save_state("child", "s", {"from": "child"}))
            prod.flush(timeout=10)
            prod.close()
            os.write(write, child_id.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and child_id
    assert _queued_ops(client) == [child_id], "the child published only its own save"
    assert prod.buffered == 100
    prod.close()
    assert _queued_ops(client) == [child_id, *parent_ids], "the parent's buffer, once"
    client.close()


def test_interpreter_exit_publishes_the_buffer(broker: str) -> None:
    script = textwrap.dedent(
        f"""
        from producer import Producer
        prod = Producer(broker_url={broker!r}, linger_ms={LONG})
        for i in range(1250):
            prod.save_state("agent", f"s{{i}}", {{"i": i}})
        print(prod.buffered)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    # Full batches of 500 go out at once, linger or not (the sender may have sent two by
    # then); the last 250 wait for the linger, so only the exit can publish them.
    assert int(out.stdout) >= 250, "still buffered when the script ended"
    client = redis.Redis.from_url(broker)
    assert len(_queued_ops(client)) == 1250
    client.close()


def test_buffered_saves_are_applied_and_readable_after_wait(
    broker: str, database: str, start_worker: WorkerFactory
) -> None:
    start_worker(broker, database)
    with producer(broker, database, linger_ms=5) as prod:
        for i in range(3000):
            prod.save_state("agent", f"s{i % 500}", {"i": i})
            if i % 3 == 0:
                prod.save_conversation("conv", {"i": i})
        prod.wait(timeout=60)
        assert prod.unconfirmed == 0
        for n in range(500):
            assert prod.get_state("agent", f"s{n}") == {"i": 2500 + n}, "the last save wins"
        history = prod.get_conversation_history("conv")
        assert history == [{"i": i} for i in range(0, 3000, 3)], "in save order, once each"
    assert rows(database, "SELECT count(*) FROM agent_states") == [(500,)]
