"""A Redis at `maxmemory` under `noeviction`: producers get a clear `PublishError`, and the
workers, running or started then, keep consuming until the backlog is drained."""

from __future__ import annotations

import pytest

from agentstore_cli.launch import RedisServer
from producer import PublishError
from tests.integration.helpers import pending, producer, wait_until
from tests.plugin import RedisFactory, WorkerFactory

PAYLOAD = {"blob": "x" * 40_000}


def _fill(server: RedisServer, database: str) -> list[str]:
    """Publish until Redis refuses; returns the states it took."""
    saved: list[str] = []
    with producer(server.url, database) as prod:
        for i in range(2_000):
            try:
                prod.save_state("agent", f"s{i}", PAYLOAD)
            except PublishError as exc:
                assert "memory" in str(exc).lower(), exc
                return saved
            saved.append(f"s{i}")
    raise AssertionError("Redis never refused a publish")


@pytest.mark.parametrize("worker_first", [True, False])
def test_workers_drain_a_full_redis(
    start_redis: RedisFactory, database: str, start_worker: WorkerFactory, worker_first: bool
) -> None:
    server = start_redis()
    client = server.client()
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + 6_000_000)
        workers = [start_worker(server.url, database)] if worker_first else []
        if worker_first:
            workers[0].proc.send_signal(19)  # SIGSTOP: Redis fills while it is delivering
        saved = _fill(server, database)
        assert len(saved) > 5
        if worker_first:
            workers[0].proc.send_signal(18)  # SIGCONT
        else:
            workers.append(start_worker(server.url, database))
        wait_until("the backlog drained", lambda: pending(client) == 0, 120, step=0.2)
        assert all(w.alive() for w in workers), workers[0].log()[-3000:]
        with producer(server.url, database) as prod:
            assert all(prod.get_state("agent", s) == PAYLOAD for s in saved)
            prod.save_state("agent", "after", {"ok": True})  # room again
    finally:
        client.close()
