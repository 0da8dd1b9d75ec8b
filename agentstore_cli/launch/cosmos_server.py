"""The local Cosmos DB test server (`cosmos-server/server.js` on Node.js), in memory only."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Self

from .processes import REPOSITORY, ServiceError, answers, free_port, stop_process

SERVER_DIR = REPOSITORY / "cosmos-server"
# The well-known key of Microsoft's emulator; the test server accepts only this one.
EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
START_TIMEOUT_S = 15.0


class CosmosServerError(ServiceError):
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
        """Stop it (its data goes with it); idempotent."""
        stop_process(self.process, timeout=5)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_cosmos_server(
    advertised_port: int | None = None, *, request_charge: str | None = None
) -> CosmosServer:
    """Start `node cosmos-server/server.js PORT` on a free loopback port and wait until it answers.

    With `advertised_port`, the server tells the SDK to send every request after the first
    to that port (e.g. a `TcpProxy`'s) instead of its own. With `request_charge`, every
    answer's `x-ms-request-charge` is that (the package's own is always "1").

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
        port = free_port()
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by CosmosServer.stop()
        process = subprocess.Popen(
            [node, str(SERVER_DIR / "server.js"), str(port), str(advertised_port or "")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=SERVER_DIR,
            env={
                **os.environ,
                "NODE_NO_WARNINGS": "1",
                "COSMOS_TEST_REQUEST_CHARGE": request_charge or "",
            },
        )
        server = CosmosServer(port=port, process=process, _log=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if f"listening {port}" in server.output() and answers(port):
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
