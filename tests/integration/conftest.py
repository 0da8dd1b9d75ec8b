"""Real services for the queue path: a test-owned redis-server per module, a fresh PostgreSQL
database per test, and `celery -A worker worker` subprocesses that are always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from producer import wire
from tests.services import free_port, fresh_pg_database, unavailable

ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """A redis-server on a free loopback port; `aof=True` fsyncs every write to `directory`."""

    def __init__(self, directory: Path, *, aof: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.aof = aof
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not on PATH")
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += [*persistence, "--dir", str(self.directory)]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                # Loading an AOF answers LOADING errors until it is done.
                client.ping()
                client.llen(wire.QUEUE)
                break
            except (redis.ConnectionError, redis.BusyLoadingError, redis.ResponseError):
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.kill()
                    unavailable(f"redis-server on port {self.port} did not start")
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final save."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[str]:
    """The module's server, emptied for this test; yields its URL."""
    client = redis_server.client()
    try:
        client.flushall()
        yield redis_server.url
    finally:
        client.close()


@pytest.fixture
def database() -> Iterator[str]:
    """A new empty PostgreSQL database for this test; yields its URL."""
    with fresh_pg_database("agentstore") as url:
        yield url


class Worker:
    """One `celery -A worker worker` process group, logging to a file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 2, queue: str = wire.QUEUE
    ) -> None:
        self.name = f"w{uuid.uuid4().hex[:8]}@%h"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--queues", queue]
        args += ["--concurrency", str(concurrency), "--loglevel", "INFO", "-n", self.name]
        # Mingle and gossip only slow start-up down; the test workers need neither.
        args += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: main process and pool children
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"worker did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group at once: main process and children, nothing finishes."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL after `timeout` s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        # Pool children that outlived their parent, if any, go too.
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """`start_worker(broker_url, database_url, **env)` -> a ready Worker, stopped at teardown.

    `queue=` another queue than ours gives a worker that only runs the reaper."""
    started: list[Worker] = []

    def start(
        broker_url: str,
        database_url: str,
        ready: bool = True,
        queue: str = wire.QUEUE,
        **extra: str,
    ) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTORE_", "COSMOS_"))}
        env.update(
            CELERY_BROKER_URL=broker_url,
            POSTGRES_CONNECTION_STRING=database_url,
            AGENTSTORE_RECOVERY_AFTER_S="3",
            AGENTSTORE_REAPER_INTERVAL_S="0.5",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log", queue=queue)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
