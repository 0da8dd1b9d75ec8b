"""What the launchers share: the repository, free ports, stopping a process, reading its log."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from pathlib import Path

# The checkout this package runs from (an editable install): bench/ and cosmos-server/ are here.
REPOSITORY = Path(__file__).resolve().parents[2]


class ServiceError(RuntimeError):
    """A service could not be used or started; the message says which and what to do."""


_PORT_ATTEMPTS = 64
_PORTS_BELOW_EPHEMERAL = 16384


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the range it also gives outgoing
    connections their local ports from: a server started seconds later could find one of
    those connections on it ("Address already in use", seen on CI). Ports below that range
    are only ever taken by a listener that asks for them.
    """
    low = _ephemeral_low()
    candidates = range(max(1024, low - _PORTS_BELOW_EPHEMERAL), low)
    for _ in range(_PORT_ATTEMPTS if candidates else 0):
        port = random.choice(candidates)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def answers(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited. A detached server's parent is PID 1,
    which may reap it seconds after it exits (~1.8 s measured in this sandbox): a zombie has
    stopped already."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user (e.g. the embedded_postgres system user)
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


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
