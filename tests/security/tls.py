"""A test-owned redis-server that speaks only TLS, with a certificate from a throwaway CA."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.services import free_port, unavailable


@dataclass
class TlsRedis:
    port: int
    ca: Path

    def url(self, db: int = 0, *, with_ca: bool = True) -> str:
        query = "ssl_cert_reqs=required" + (f"&ssl_ca_certs={self.ca}" if with_ca else "")
        return f"rediss://127.0.0.1:{self.port}/{db}?{query}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by it."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=agentstore test CA",
        cwd=directory,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        cwd=directory,
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        unavailable("redis-server and openssl are needed for the TLS broker")
    directory = tmp_path_factory.mktemp("tls")
    make_certificates(directory)
    server = TlsRedis(free_port(), directory / "ca.pem")
    args = [binary, "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", "server.pem", "--tls-key-file", "server.key"]
    args += ["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(
        args, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        client = redis.Redis.from_url(server.url(), socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    unavailable("redis-server did not start with TLS (built without it?)")
                time.sleep(0.05)
        client.close()
        yield server
    finally:
        process.kill()
        process.wait(timeout=10)
