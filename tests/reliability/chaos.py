"""The faults of the soak: SIGKILL a worker's process group, terminate the workers' database
connections, SIGKILL the primary Redis (the Sentinels promote a replica), SIGKILL and restart
a replica, restart PostgreSQL. One thread injects them at random intervals and times, after
each, the first publish and the first apply that follow it (`tests.reliability.recovery`)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from agentstore_cli.launch import CeleryWorker, PostgresServer, SentinelCluster
from broker import keys, wire
from broker.connection import connect
from broker.sentinel import SentinelOptions
from storage.pg_url import options
from tests.integration.helpers import rows
from tests.queued import pending_ids
from tests.reliability.recovery import Probe, Recovery

KILL = "worker SIGKILL"
TERMINATE = "pg_terminate_backend"
FAILOVER = "Sentinel failover"
REPLICA_RESTART = "replica restart"
PG_RESTART = "PostgreSQL restart"
# Between two worker kills, one of these: a shuffled round of all four, then another round.
OTHERS = (TERMINATE, FAILOVER, REPLICA_RESTART, PG_RESTART)
FAULTS = (KILL, *OTHERS)
SETTLE_TIMEOUT_S = 60.0


def _nothing() -> None:
    pass


@dataclass
class Fault:
    """One injected fault. `restore` is what its recovery needs from outside (a server
    started again), run before the first apply is awaited; `settle` brings the cluster back
    to full strength afterwards, so that faults do not pile up."""

    detail: str
    restore: Callable[[], None] = _nothing
    settle: Callable[[], None] = _nothing


@dataclass
class Cluster:
    """Workers, broker (a Sentinel cluster) and database (a private PostgreSQL server) of
    one soak; the chaos breaks and repairs them."""

    broker: SentinelCluster
    postgres: PostgresServer
    start_worker: Callable[[], CeleryWorker]
    size: int
    workers: list[CeleryWorker] = field(default_factory=list)
    unexpected_exits: int = 0
    in_flight_at_kills: int = 0  # taken from the queue by some worker, not yet confirmed

    @property
    def database(self) -> str:
        return self.postgres.url

    def client(self) -> redis.Redis:
        """A client of whichever server the Sentinels name as the primary."""
        sentinel = SentinelOptions(self.broker.master, self.broker.sentinel_password)
        return connect(self.broker.url, 2.0, sentinel)

    def start(self) -> None:
        self.workers = [self.start_worker() for _ in range(self.size)]

    def replace_dead(self) -> None:
        """Restart workers that exited without being killed by us (each one a finding)."""
        for i, worker in enumerate(self.workers):
            if not worker.alive():
                self.unexpected_exits += 1
                self.workers[i] = self.start_worker()

    def kill_worker(self, rng: random.Random) -> Fault:
        i = rng.randrange(len(self.workers))
        in_flight = self._in_flight()
        self.workers[i].kill()
        self.in_flight_at_kills += in_flight

        def replace() -> None:
            self.workers[i] = self.start_worker()

        return Fault(f"worker {i}, {in_flight} messages in flight", settle=replace)

    def _in_flight(self) -> int:
        client = self.client()
        try:
            queued = {wire.message_id_of(raw) for raw in client.lrange(keys.QUEUE, 0, -1)}
            pending = set(pending_ids(client))
            return len(pending - queued)
        finally:
            client.close()

    def terminate_connections(self, rng: random.Random) -> Fault:
        # Sometimes a short burst, so a retry on a fresh connection is killed as well.
        total = 0
        bursts = rng.choice((1, 1, 3))
        for _ in range(bursts):
            total += terminate_worker_connections(self.database)
            time.sleep(0.05)
        return Fault(f"{total} connections in {bursts} burst(s)")

    def fail_over(self, rng: random.Random) -> Fault:
        old = self.broker.kill_primary()

        def promoted() -> None:
            self.broker.wait_for_primary(old, SETTLE_TIMEOUT_S)

        def rejoin() -> None:
            # The killed server, empty (no persistence), comes back as a replica of the new.
            self.broker.rejoin(old)
            self.broker.wait_replicas_online(len(self.broker.servers) - 1, SETTLE_TIMEOUT_S)

        return Fault(
            f"primary on port {old.port} killed",
            restore=promoted,
            settle=rejoin,
        )

    def restart_replica(self, rng: random.Random) -> Fault:
        primary = self.broker.primary()
        replica = rng.choice([s for s in self.broker.servers if s is not primary])
        down = rng.uniform(0.2, 1.5)
        replica.kill()

        def restart() -> None:
            time.sleep(down)
            self.broker.rejoin(replica)  # a replica of the current primary, resynced in full
            self.broker.wait_replicas_online(len(self.broker.servers) - 1, SETTLE_TIMEOUT_S)

        return Fault(f"replica on port {replica.port} down {down:.1f}s", settle=restart)

    def restart_postgres(self, rng: random.Random) -> Fault:
        down = rng.uniform(0.5, 2.0)
        stopping = time.monotonic()
        self.postgres.stop()  # fast shutdown: every session ends, refused until started
        stopped = time.monotonic() - stopping

        def start() -> None:
            time.sleep(down)
            self.postgres.start()

        return Fault(f"stop took {stopped:.1f}s, down {down:.1f}s more", restore=start)


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
    """Injects a fault every `gap` seconds (uniform) after the last one settled, for
    `duration` seconds, and longer (at most `overtime` s) until every kind has been injected
    and there were `min_kills` worker kills.

    Every other fault is a worker kill, so the kill count has a floor whatever the seed; the
    others go round `OTHERS` in shuffled rounds, so each kind comes up whatever the seed.
    After each fault `probe` times the first publish and the first apply that follow it.
    """

    def __init__(
        self,
        cluster: Cluster,
        probe: Probe,
        rng: random.Random,
        duration: float,
        gap: tuple[float, float],
        *,
        min_kills: int,
        overtime: float,
    ) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.cluster = cluster
        self.probe = probe
        self.counts: Counter[str] = Counter()
        self.recoveries: dict[str, list[Recovery]] = defaultdict(list)
        self.events: list[tuple[float, str, str]] = []
        self.error: BaseException | None = None
        self._rng = rng
        self._duration = duration
        self._gap = gap
        self._min_kills = min_kills
        self._overtime = overtime
        self._stopped = threading.Event()
        self._deck: list[str] = []

    def covered(self) -> bool:
        """Every kind injected, and enough kills."""
        return self.counts[KILL] >= self._min_kills and all(self.counts[k] for k in OTHERS)

    def run(self) -> None:
        start = time.monotonic()
        try:
            n = 0
            while not self._stopped.wait(self._rng.uniform(*self._gap)):
                elapsed = time.monotonic() - start
                if elapsed >= self._duration and self.covered():
                    break
                if elapsed >= self._duration + self._overtime:
                    break  # the test reports what is missing
                self.cluster.replace_dead()
                self._inject(self._next(n), n, elapsed)
                n += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _next(self, n: int) -> str:
        if n % 2 == 0:
            return KILL
        if not self._deck:
            self._deck = self._rng.sample(OTHERS, len(OTHERS))
        return self._deck.pop()

    def _inject(self, kind: str, n: int, at: float) -> None:
        actions: dict[str, Callable[[random.Random], Fault]] = {
            KILL: self.cluster.kill_worker,
            TERMINATE: self.cluster.terminate_connections,
            FAILOVER: self.cluster.fail_over,
            REPLICA_RESTART: self.cluster.restart_replica,
            PG_RESTART: self.cluster.restart_postgres,
        }
        injected = time.monotonic()
        fault = actions[kind](self._rng)
        self.counts[kind] += 1
        self.events.append((at, kind, fault.detail))
        self.recoveries[kind].append(self.probe.recovery(n, injected, fault.restore))
        fault.settle()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=SETTLE_TIMEOUT_S * 3)
