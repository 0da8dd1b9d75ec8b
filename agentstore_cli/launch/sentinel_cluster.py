"""A replicated Redis behind Sentinels on loopback ports: one primary, its replicas, and
`redis-server --sentinel` processes watching them, with short failover timeouts."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, cast

import redis

from .processes import ServiceError, free_port, stop_process, tail
from .redis_server import START_TIMEOUT_S, STOP_TIMEOUT_S, RedisServer, Tls

MASTER_NAME = "mymaster"


class SentinelProcess:
    """One Sentinel: `redis-server <conf> --sentinel`, its config rewritten by itself."""

    def __init__(self, directory: Path, tls: Tls | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.port = free_port()
        self.run_id = uuid.uuid4().hex + uuid.uuid4().hex[:8]  # `sentinel myid`: 40 hex digits
        self.conf_path = directory / "sentinel.conf"
        self.log_path = directory / "sentinel.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, conf: str, password: str | None) -> None:
        """Start it with these `sentinel ...` lines; returns once it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not on PATH (install Redis, e.g. redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        head = f"bind 127.0.0.1\ndir {self.directory}\nsentinel myid {self.run_id}\n"
        if self.tls is None:
            head += f"port {self.port}\n"
        else:  # TLS only, to clients and to the servers it watches
            head += f"port 0\ntls-port {self.port}\ntls-auth-clients no\ntls-replication yes\n"
            head += f"tls-cert-file {self.tls.cert}\ntls-key-file {self.tls.key}\n"
            head += f"tls-ca-cert-file {self.tls.ca}\n"
        self.conf_path.write_text(head + conf)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, str(self.conf_path), "--sentinel"],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = self.client(password)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ServiceError(
                        f"the Sentinel on port {self.port} did not start; its log "
                        f"({self.log_path}) ends with:\n{tail(self.log_path)}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def client(self, password: str | None) -> redis.Redis:
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return redis.Redis(
            "127.0.0.1",
            self.port,
            password=password,
            socket_timeout=5,
            decode_responses=True,
            **tls,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, STOP_TIMEOUT_S)
            self.process = None


class SentinelCluster:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum: a majority).

    `url` is the broker URL (`sentinel://...;...`) for `AGENTSTORE_SENTINEL_MASTER` =
    `master`; `kill_primary()` SIGKILLs the current primary, `wait_for_primary()` waits for
    the Sentinels to promote another, and `rejoin()` restarts a killed server as a replica
    of the current primary. No persistence: a server's data is whatever replication gave it.

    Args:
        directory: one subdirectory per server and Sentinel (data, logs, configs).
        password: required by the Redis servers (and given by the URL).
        sentinel_password: required by the Sentinels (`AGENTSTORE_SENTINEL_PASSWORD`).
        tls: servers and Sentinels speak TLS only, with these files (replication too); clients
            then need `AGENTSTORE_SENTINEL_TLS=true` and to trust `tls.ca`.
        down_after_ms, failover_timeout_ms: the Sentinels' failure detection and failover
            timeouts (short, so a failover takes a few seconds).
    """

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        master: str = MASTER_NAME,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        tls: Tls | None = None,
    ) -> None:
        self.directory = directory
        self.master = master
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        # A replica's full sync starts at once instead of after Redis's default 5 s delay.
        args: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
        args += ("--masterauth", password) if password else ()
        args += ("--tls-replication", "yes") if tls else ()
        self.servers = [
            RedisServer(directory / f"redis-{i}", password=password, tls=tls, args=args)
            for i in range(1 + replicas)
        ]
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self.sentinels = [
            SentinelProcess(directory / f"sentinel-{i}", tls) for i in range(sentinels)
        ]

    @property
    def url(self) -> str:
        """The broker URL: every Sentinel, the servers' password if they have one, and with
        TLS the CA to verify them by (`ssl_*` parameters, as in a `rediss://` URL)."""
        auth = f":{self.password}@" if self.password else ""
        tls = "" if self.tls is None else f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}"
        return ";".join(f"sentinel://{auth}127.0.0.1:{s.port}/0{tls}" for s in self.sentinels)

    def _sentinel_conf(self, primary: RedisServer, me: SentinelProcess) -> str:
        name, quorum = self.master, len(self.sentinels) // 2 + 1
        lines = [
            f"sentinel monitor {name} 127.0.0.1 {primary.port} {quorum}",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        # Told about each other and the replicas up front: discovering them takes seconds.
        lines += [
            f"sentinel known-sentinel {name} 127.0.0.1 {other.port} {other.run_id}"
            for other in self.sentinels
            if other is not me
        ]
        lines += [
            f"sentinel known-replica {name} 127.0.0.1 {server.port}"
            for server in self.servers
            if server is not primary
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}"]
            lines += [f"sentinel sentinel-pass {self.sentinel_password}"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the primary, its replicas (waiting until they are in sync), the Sentinels."""
        primary, *replicas = self.servers
        primary.start()
        for server in replicas:
            server.args = (*server.args, "--replicaof", "127.0.0.1", str(primary.port))
            server.start()
        self.wait_replicas_online(len(replicas))
        for sentinel in self.sentinels:
            sentinel.start(self._sentinel_conf(primary, sentinel), self.sentinel_password)
        self._wait(lambda: self._sentinels_know_replicas(len(replicas)), "Sentinels to see all")

    def primary(self) -> RedisServer:
        """The server the Sentinels name as the primary now."""
        port = self._primary_port(self.sentinels[0])
        return next(s for s in self.servers if s.port == port)

    def _primary_port(self, sentinel: SentinelProcess) -> int:
        client = sentinel.client(self.sentinel_password)
        try:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)  # type: ignore[no-untyped-call]
            return int(address[1])
        finally:
            client.close()

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (for `rejoin`)."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_for_primary(self, other_than: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every Sentinel names a primary other than `other_than`, and it is one."""

        def promoted() -> bool:
            ports = {self._primary_port(sentinel) for sentinel in self.sentinels}
            if len(ports) != 1 or other_than.port in ports:
                return False
            server = next(s for s in self.servers if s.port in ports)
            return self._role(server) == "master"

        self._wait(promoted, "a new primary", timeout)
        return self.primary()

    def rejoin(self, server: RedisServer) -> None:
        """Restart a killed server as a replica of the current primary."""
        primary = self.primary()
        args = list(server.args)
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at : at + 3]
        server.args = (*args, "--replicaof", "127.0.0.1", str(primary.port))
        server.start()

    def wait_replicas_online(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the current primary has `count` replicas online."""

        def online() -> bool:
            servers = [s for s in self.servers if s.process is not None]
            primary = next(s for s in servers if self._role(s) == "master")
            client = primary.client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            states = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return sum(1 for v in states if v.get("state") == "online") >= count

        self._wait(online, f"{count} replica(s) online", timeout)

    def _sentinels_know_replicas(self, count: int) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client(self.sentinel_password)
            try:
                state = cast(dict[str, Any], client.sentinel_master(self.master))
            finally:
                client.close()
            if int(state.get("num-slaves", 0)) < count:
                return False
            if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    @staticmethod
    def _role(server: RedisServer) -> str | None:
        client = server.client()
        try:
            role: str = client.info("replication")["role"]
            return role
        except redis.RedisError:
            return None
        finally:
            client.close()

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"gave up waiting {timeout:g}s for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every Sentinel and server (idempotent)."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
