"""redis-server (or Valkey) on a loopback port: plain, with AOF, a password or TLS only."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self
from urllib.parse import quote

import redis

from .processes import ServiceError, free_port, stop_process, tail

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Tls:
    """Certificate files of a TLS-only server; clients verify its certificate against `ca`."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    """A Redis-protocol server on 127.0.0.1 with its data and log in `directory`.

    `start()` it (or use it as a context manager) and it answers at `url` once it serves
    commands; `kill()` then `start()` restarts it on the same port with the same data.

    Args:
        directory: its working directory: AOF files and `log_name`.
        port: where it listens; a free port if omitted.
        aof: None for no persistence, else the AOF fsync policy ("always": no acknowledged
            write is lost to a kill; "everysec": Redis's default).
        password: required from clients (`--requirepass`); part of `url`.
        tls: serve TLS only, with these files; `url` is then `rediss://` and names the CA.
        args: more command-line settings, e.g. `("--maxmemory", "10mb")`.
        binary: the server executable; `redis-server` from PATH if omitted.
        log_name: its log file in `directory`, appended to across restarts.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        aof: Literal["always", "everysec"] | None = None,
        password: str | None = None,
        tls: Tls | None = None,
        args: Sequence[str] = (),
        binary: Path | None = None,
        log_name: str = "redis-server.log",
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.aof = aof
        self.password = password
        self.tls = tls
        self.args = tuple(args)
        self.binary = binary
        self.log_path = directory / log_name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database `db`, with the password and TLS settings clients need."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/{db}"
        query = f"ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}"
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}?{query}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url_for(db), socket_timeout=10, socket_connect_timeout=5)

    def command(self, binary: str) -> list[str]:
        args = [binary, "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", ""]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca)]
        if self.aof is None:
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", self.aof]
        if self.password:
            args += ["--requirepass", self.password]
        return [*args, *self.args]

    def start(self) -> None:
        """Start it and wait until it serves commands (an AOF loaded); `ServiceError` if not."""
        binary = str(self.binary) if self.binary else shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not on PATH (install Redis, e.g. redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Own session: a Ctrl-C at the terminal reaches only whoever started it, which
            # then stops the workers before the broker they use.
            self.process = subprocess.Popen(
                self.command(binary),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not self._serving(client, self.process.pid):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise ServiceError(
                        f"{Path(binary).name} did not start on port {self.port}; its log "
                        f"({self.log_path}) ends with:\n{tail(self.log_path)}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    @staticmethod
    def _serving(client: redis.Redis, pid: int) -> bool:
        try:
            # Only our own process counts: another server already on the port would answer too.
            if client.info("server").get("process_id") != pid:
                return False
            client.dbsize()  # while an AOF loads, data commands answer LOADING
            return True
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final write."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: the AOF is flushed), SIGKILL if it hangs; idempotent."""
        if self.process is not None:
            stop_process(self.process, STOP_TIMEOUT_S)
            self.process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
