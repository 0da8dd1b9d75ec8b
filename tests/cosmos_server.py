"""Starts the local Cosmos DB test server (`cosmos-server/server.js`) for one test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SERVER_DIR = Path(__file__).resolve().parent.parent / "cosmos-server"
# The well-known key of Microsoft's emulator; the test server accepts only this one.
EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
START_TIMEOUT_S = 15.0


class CosmosServerError(RuntimeError):
    """The test server could not be started."""


@dataclass
class CosmosServer:
    """A running test server; `stop()` it when done."""

    port: int
    process: subprocess.Popen[bytes]
    key: str = EMULATOR_KEY
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def output(self) -> str:
        """Everything the server printed so far."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_cosmos_server(advertised_port: int | None = None) -> CosmosServer:
    """Start `node cosmos-server/server.js PORT` on a free loopback port and wait until it answers.

    With `advertised_port`, the server tells the SDK to send every request after the first
    to that port (e.g. a `TcpProxy`'s) instead of its own.

    Raises `CosmosServerError` with the server's output if it does not answer within 15 s, and
    one saying to run `npm ci --prefix cosmos-server` if its dependencies are not installed.
    """
    if not (SERVER_DIR / "node_modules" / "@vercel" / "cosmosdb-server").is_dir():
        raise CosmosServerError(
            f"{SERVER_DIR / 'node_modules'} is missing: run `npm ci --prefix cosmos-server` "
            "from the repository root to install the Cosmos DB test server"
        )
    node = shutil.which("node")
    if node is None:
        raise CosmosServerError("`node` is not on PATH; the Cosmos DB test server needs Node.js 20")
    # Retry on a port race: another process may take the port between our probe and the bind.
    last_output = ""
    for _ in range(3):
        port = _free_port()
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by CosmosServer.stop()
        process = subprocess.Popen(
            [node, str(SERVER_DIR / "server.js"), str(port), str(advertised_port or "")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=SERVER_DIR,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        server = CosmosServer(port=port, process=process, _log=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if f"listening {port}" in server.output() and _answers(port):
                return server
            time.sleep(0.05)
        last_output = server.output()
        timed_out = process.poll() is None
        server.stop()
        if timed_out:
            raise CosmosServerError(
                f"Cosmos DB test server did not answer on port {port} within "
                f"{START_TIMEOUT_S:.0f} s; its output:\n{last_output or '(none)'}"
            )
        if "EADDRINUSE" not in last_output:
            break
    raise CosmosServerError(
        f"Cosmos DB test server exited with code {process.returncode}; its output:\n"
        f"{last_output or '(none)'}"
    )


class TcpProxy:
    """Forwards loopback TCP connections on `port` to `target` (set it before the first
    connection); `refuse()` closes the port and every connection (clients get "connection
    refused") until `accept()` opens it again."""

    def __init__(self, target: int = 0) -> None:
        self.target = target
        self.port = _free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.accept()

    def accept(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        with self._lock:
            doomed, self._sockets = self._sockets, set()
            if self._listener is not None:
                doomed.add(self._listener)
            self._listener = None
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return  # refuse() closed the listener
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
