"""What the launchers share: the repository, free ports, stopping a process, reading its log."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

# The checkout this package runs from (an editable install): bench/ and cosmos-server/ are here.
REPOSITORY = Path(__file__).resolve().parents[2]


class ServiceError(RuntimeError):
    """A service could not be used or started; the message says which and what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within `timeout` s."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"
