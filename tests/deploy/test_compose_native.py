"""Each service of docker-compose.yml that runs our image, run here natively.

Its command and environment come from the compose file; only endpoints are swapped for local
services (a spare Redis database, a fresh PostgreSQL database, a local Cosmos DB test
server). A wrong module path, variable name or command fails here, not in production.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agentstore_cli.launch import EMULATOR_KEY, free_port, start_cosmos_server
from producer import Producer
from tests.services import fresh_pg_database, started

from .files import dockerfile_instructions, load_compose, our_services, service_environment
from .native import NativeProcess, base_environment, command_of, localized_environment, start

COMPOSE = load_compose()
OURS = our_services(COMPOSE)
WORKERS = sorted(
    n for n, s in OURS.items() if command_of(s)[:4] == ["celery", "-A", "worker", "worker"]
)
ONE_SHOTS = sorted(set(OURS) - set(WORKERS))
# What a user following .env.example puts in .env for these profiles.
DOTENV = {"POSTGRES_PASSWORD": "compose-test-only", "COSMOS_KEY": EMULATOR_KEY}


class LocalServices:
    """Local stand-ins for the compose services, made on first use, shared within a test."""

    def __init__(self, stack: ExitStack, redis_url: str) -> None:
        self._stack = stack
        self._made: dict[str, str] = {"CELERY_BROKER_URL": redis_url}

    def __call__(self, variable: str) -> str:
        if variable not in self._made:
            self._made[variable] = self._make(variable)
        return self._made[variable]

    def _make(self, variable: str) -> str:
        if variable == "POSTGRES_CONNECTION_STRING":
            return self._stack.enter_context(fresh_pg_database("agentstore_compose"))
        if variable == "COSMOS_ENDPOINT":
            return started(self._stack, start_cosmos_server).endpoint
        raise AssertionError(f"no local stand-in for {variable}")


@pytest.fixture
def local(spare_redis_url: str) -> Iterator[LocalServices]:
    with ExitStack() as stack:
        yield LocalServices(stack, spare_redis_url)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def _env(name: str, local: Callable[[str], str]) -> dict[str, str]:
    hosts = set(COMPOSE["services"])
    return base_environment() | localized_environment(OURS[name], DOTENV, hosts, local)


def _start_worker(name: str, local: LocalServices, workdir: Path) -> NativeProcess:
    worker = start(name, command_of(OURS[name]), _env(name, local), workdir)
    try:
        # Celery logs "celery@host ready." once it consumes from the queue.
        worker.wait_for(" ready.", timeout=45)
    except BaseException:
        worker.stop()
        raise
    return worker


def _store_settings(env: dict[str, str]) -> dict[str, Any]:
    # Empty means unset, as for environment variables (`env_ignore_empty`).
    names = ("POSTGRES_CONNECTION_STRING", "COSMOS_ENDPOINT", "COSMOS_KEY", "COSMOS_DATABASE_NAME")
    settings: dict[str, Any] = {n.lower(): env.get(n) or None for n in names}
    if settings["cosmos_database_name"] is None:
        del settings["cosmos_database_name"]
    return settings


def test_there_are_services_to_run() -> None:
    assert "worker" in WORKERS and "demo" in ONE_SHOTS


def test_compose_defaults_use_the_password_from_dotenv() -> None:
    env = service_environment(OURS["worker"], DOTENV)
    url = urlsplit(env["POSTGRES_CONNECTION_STRING"])
    assert (url.hostname, url.password) == ("postgres", DOTENV["POSTGRES_PASSWORD"])
    assert urlsplit(env["CELERY_BROKER_URL"]).hostname == "redis"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_service_starts_answers_applies_and_stops(
    name: str, local: LocalServices, workdir: Path
) -> None:
    env = _env(name, local)
    worker = _start_worker(name, local, workdir)
    try:
        # Naming the node lets the ping return on its answer instead of after the timeout.
        node = f"celery@{socket.gethostname()}"
        ping = subprocess.run(
            ["celery", "-A", "worker", "inspect", "ping", "--timeout", "10", "-d", node],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        # A save through the queue lands in the store the service's variables name.
        producer = Producer(broker_url=env["CELERY_BROKER_URL"], **_store_settings(env))
        try:
            state = {"service": name, "nonce": uuid.uuid4().hex}
            op_id = producer.save_state(f"compose-{name}", "probe", state)
            assert op_id is not None
            producer.wait([op_id], timeout=30)
            assert producer.get_state(f"compose-{name}", "probe") == state
        finally:
            producer.close()
    finally:
        code = worker.stop()
    assert code == 0, f"{name} exited with {code}:\n{worker.tail()}"
    assert "Traceback" not in worker.output(), worker.tail(60)


@pytest.mark.parametrize("name", ONE_SHOTS)
def test_one_shot_service_runs_to_success(name: str, local: LocalServices, workdir: Path) -> None:
    service = OURS[name]
    dependencies = [d for d in service.get("depends_on", {}) if d in WORKERS]
    with ExitStack() as stack:
        for dependency in dependencies:
            worker = _start_worker(dependency, local, workdir)
            stack.callback(worker.stop)
        command = command_of(service)
        assert shutil.which(command[0], path=base_environment()["PATH"]), command[0]
        result = subprocess.run(
            command,
            env=_env(name, local),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    if name == "demo":
        assert "verified" in result.stdout, result.stdout


def _healthcheck() -> tuple[list[str], float]:
    check = next(i for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK")
    options, _, exec_form = check.arguments.partition("CMD")
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout, "HEALTHCHECK needs an explicit --timeout"
    return json.loads(exec_form), float(timeout.group(1))


def test_image_healthcheck_passes_in_a_worker_environment(
    local: LocalServices, workdir: Path
) -> None:
    command, limit = _healthcheck()
    started = time.monotonic()
    result = subprocess.run(
        command,
        env=_env("worker", local),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=limit + 20,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < limit, "slower than the HEALTHCHECK timeout"


def test_image_healthcheck_fails_when_the_broker_is_down(
    local: LocalServices, workdir: Path
) -> None:
    command, limit = _healthcheck()
    env = _env("worker", local) | {"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    result = subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, timeout=limit + 20
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert time.monotonic() - started < limit, "slower than the HEALTHCHECK timeout"
