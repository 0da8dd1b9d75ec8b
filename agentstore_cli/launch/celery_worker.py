"""`celery -A <app> worker` processes: started in a process group of their own, always stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from .processes import ServiceError, tail

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class CeleryWorker:
    """One `celery -A <app> worker` process group (main process and pool children), its
    output in `log_path`. Start it, `wait_ready()`, and `stop()` or `kill()` it.

    Args:
        env: its whole environment (nothing else is inherited).
        log_path: where its output goes (the file is replaced).
        app: the Celery app module (`-A`).
        concurrency: pool processes.
        loglevel: Celery's `--loglevel`; above INFO there is no "ready" line to wait for,
            so `wait_ready()` waits for the pool's children instead.
        name: the node name before `@host`; a unique one if omitted.
        cwd: its working directory (for an app that is not installed); inherited if None.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        app: str = "worker",
        concurrency: int = 2,
        loglevel: str = "INFO",
        name: str | None = None,
        cwd: Path | None = None,
        queue: str | None = None,
    ) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        self.concurrency = concurrency
        self._banner = logging.getLevelName(loglevel.upper()) <= logging.INFO
        self._terminated = False
        args = [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", loglevel]
        args += ["--concurrency", str(concurrency), "-n", f"{self.name}@%h"]
        # Mingle and gossip only slow start-up down; one worker needs nothing from another.
        args += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        if queue is not None:  # another queue than ours: a worker that only runs the reaper
            args += ["--queues", queue]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=cwd,
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own group: signals reach the main process and its pool children, and a
                # Ctrl-C at the terminal reaches only whoever started it.
                start_new_session=True,
            )

    def log(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The main process and its children."""
        pids = [self.proc.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(p) for p in children.split()]
        return pids

    def ready(self) -> bool:
        if self._banner:
            # Celery logs "celery@host ready." once it consumes from the queue.
            return " ready." in self.log()
        return len(self.pids()) > self.concurrency

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until it consumes; if it exits or `timeout` s pass, kill it and raise
        `ServiceError` with the end of its log."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive() or time.monotonic() > deadline:
                code = self.proc.poll()
                self.kill()
                state = "not ready in time" if code is None else f"exited with code {code}"
                raise ServiceError(
                    f"worker {self.name}: {state}; its log ({self.log_path}) ends with:\n"
                    f"{tail(self.log_path, 40)}"
                )
            time.sleep(0.05)
        if not self._banner:
            time.sleep(1.0)  # the children run their process-init (store, reaper) after forking

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP the whole group: nothing is taken from the queue until `resume()`."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole group at once: main process and children, nothing finishes."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """Begin a warm shutdown (SIGTERM to the main process: the batch in hand is finished)."""
        self.resume()
        if self.alive() and not self._terminated:
            self._terminated = True
            self.proc.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Warm shutdown, then SIGKILL to the group after `timeout` s; idempotent."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        # Pool children that outlived their parent, if any, go too.
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
