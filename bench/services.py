"""What a benchmark run starts and always stops: redis-server, databases, worker boxes and the
Cosmos DB test server, from the launchers the tests and the demo use (`agentstore_cli.launch`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from agentstore_cli.launch import (
    REPOSITORY,
    CeleryWorker,
    RedisServer,
    fresh_database,
    start_cosmos_server,
)

ROOT = REPOSITORY
# The local server's admin URL, allowed to create and drop the benchmarks' databases.
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

__all__ = ["ROOT", "WorkerBox", "database", "redis_server", "start_cosmos_server"]


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free loopback port; yields its URL."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir,
        RedisServer(Path(workdir)) as server,
    ):
        yield server.url


def database(admin_url: str, prefix: str = "agentstore_bench") -> AbstractContextManager[str]:
    """A new empty PostgreSQL database, dropped afterwards; yields its URL."""
    return fresh_database(admin_url, prefix)


class WorkerBox(CeleryWorker):
    """`celery -A <app> worker` with prefork children at WARNING level (logging would cost
    throughput), its log in a temporary file kept only after a failure; stopped on exit.

    `pause()`/`resume()` (SIGSTOP/SIGCONT to the whole process group) let a benchmark fill
    the queue first and start the clock exactly when the workers start draining it.
    """

    def __init__(self, app: str, env: dict[str, str], concurrency: int = 2) -> None:
        handle, log_path = tempfile.mkstemp(prefix="bench-worker-", suffix=".log")
        os.close(handle)
        super().__init__(
            {**os.environ, **env},
            Path(log_path),
            app=app,
            concurrency=concurrency,
            loglevel="WARNING",
            name=f"bench{uuid.uuid4().hex[:6]}",
            cwd=ROOT,
        )

    def peak_rss_mb(self) -> dict[int, float]:
        """Peak resident memory (VmHWM) of each process so far, in MB."""
        peaks = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[pid] = int(line.split()[1]) / 1024
        return peaks

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is None:  # kept for reading after a failure only
            self.log_path.unlink(missing_ok=True)
