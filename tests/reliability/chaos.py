"""The faults: SIGKILL a worker's process group, terminate its database connections,
restart the broker (AOF, fsync always). One thread injects them at random intervals."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agentstore_cli.launch import CeleryWorker, RedisServer
from broker import keys, wire
from storage.pg_url import options
from tests.integration.helpers import rows
from tests.queued import pending_ids

KILL, TERMINATE, RESTART = "worker SIGKILL", "pg_terminate_backend", "redis restart"


@dataclass
class Cluster:
    """Workers, broker and database of one soak; the chaos breaks and repairs them."""

    redis: RedisServer
    database: str
    start_worker: Callable[[], CeleryWorker]
    size: int
    workers: list[CeleryWorker] = field(default_factory=list)
    unexpected_exits: int = 0
    in_flight_at_kills: int = 0  # taken from the queue by some worker, not yet confirmed

    def start(self) -> None:
        self.workers = [self.start_worker() for _ in range(self.size)]

    def replace_dead(self) -> None:
        """Restart workers that exited without being killed by us (each one a finding)."""
        for i, worker in enumerate(self.workers):
            if not worker.alive():
                self.unexpected_exits += 1
                self.workers[i] = self.start_worker()

    def kill_worker(self, rng: random.Random) -> str:
        i = rng.randrange(len(self.workers))
        in_flight = self._in_flight()
        self.workers[i].kill()
        self.in_flight_at_kills += in_flight
        self.workers[i] = self.start_worker()
        return f"worker {i}, {in_flight} messages in flight"

    def _in_flight(self) -> int:
        client = self.redis.client()
        try:
            queued = {wire.message_id_of(raw) for raw in client.lrange(keys.QUEUE, 0, -1)}
            pending = set(pending_ids(client))
            return len(pending - queued)
        finally:
            client.close()

    def terminate_connections(self, rng: random.Random) -> str:
        # Sometimes a short burst, so a retry on a fresh connection is killed as well.
        total = 0
        bursts = rng.choice((1, 1, 3))
        for _ in range(bursts):
            total += terminate_worker_connections(self.database)
            time.sleep(0.05)
        return f"{total} connections in {bursts} burst(s)"

    def restart_redis(self, rng: random.Random) -> str:
        down = rng.uniform(0.2, 1.5)
        self.redis.kill()
        time.sleep(down)
        self.redis.start()
        return f"down {down:.1f}s"


def terminate_worker_connections(database: str) -> int:
    name = options(database)["dbname"]
    killed = rows(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'agentstore' AND pid <> pg_backend_pid()",
        (name,),
    )
    return sum(1 for (ok,) in killed if ok)


class Chaos(threading.Thread):
    """Injects a fault every `gap` seconds (uniform), for `duration` seconds.

    Every other fault is a worker kill, so the kill count has a floor whatever the seed;
    the others are a database-connection kill or a broker restart, at random.
    """

    def __init__(
        self, cluster: Cluster, rng: random.Random, duration: float, gap: tuple[float, float]
    ) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.cluster = cluster
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[float, str, str]] = []
        self.error: BaseException | None = None
        self._rng = rng
        self._duration = duration
        self._gap = gap
        self._stopped = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        actions = {
            KILL: self.cluster.kill_worker,
            TERMINATE: self.cluster.terminate_connections,
            RESTART: self.cluster.restart_redis,
        }
        try:
            n = 0
            while not self._stopped.wait(self._rng.uniform(*self._gap)):
                if time.monotonic() - start >= self._duration:
                    break
                self.cluster.replace_dead()
                kind = KILL if n % 2 == 0 else self._rng.choice((TERMINATE, RESTART))
                detail = actions[kind](self._rng)
                self.counts[kind] += 1
                self.events.append((time.monotonic() - start, kind, detail))
                n += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=120)
