"""A test-owned redis-server that speaks only TLS, with a certificate from a throwaway CA."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from agentstore_cli.launch import RedisServer, Tls
from tests.services import started, unavailable


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
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A test-owned redis-server that speaks only TLS; its `url` names our CA."""
    if shutil.which("openssl") is None:
        unavailable("openssl is needed for the TLS broker's certificates")
    directory = tmp_path_factory.mktemp("tls")
    make_certificates(directory)
    tls = Tls(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    with ExitStack() as stack:
        yield started(stack, lambda: RedisServer(directory, tls=tls))
