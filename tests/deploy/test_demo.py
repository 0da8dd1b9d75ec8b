"""`python -m agentstore_cli.demo` (what `make demo` runs), run as a user would."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import fresh_pg_database

from .native import base_environment, processes

DEMO = [sys.executable, "-m", "agentstore_cli.demo"]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database("agentstore_demo") as url:
        yield url


def _celery_on(broker_url: str) -> list[int]:
    return processes(lambda argv, env: env.get("CELERY_BROKER_URL") == broker_url)


def test_demo_verifies_everything_and_stops_its_workers(
    spare_redis_url: str, pg_url: str, tmp_path: Path
) -> None:
    env = base_environment() | {"CELERY_BROKER_URL": spare_redis_url}
    env["POSTGRES_CONNECTION_STRING"] = pg_url
    started = time.monotonic()
    result = subprocess.run(
        [*DEMO, "--agents", "4", "--rounds", "25", "--data-dir", str(tmp_path / "demo")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "all 400 saves verified" in result.stdout, output
    assert "PostgreSQL: configured server at" in result.stdout
    assert "Redis: configured server at" in result.stdout
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", result.stdout), output
    assert time.monotonic() - started < 30, "the demo should take seconds, not minutes"
    assert not _celery_on(spare_redis_url), "the demo left workers running"
    assert sorted(p.name for p in (tmp_path / "demo").glob("worker-*.log")) == [
        "worker-1.log",
        "worker-2.log",
    ]


def test_ctrl_c_stops_workers_and_embedded_servers(tmp_path: Path, embedded_dir: Path) -> None:
    data_dir = embedded_dir / "demo"
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [*DEMO, "--embedded", "--rounds", "1000000", "--data-dir", str(data_dir)],
            env=base_environment(),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "workers: 2" not in out.read_text():
                assert demo.poll() is None, out.read_text()
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
            time.sleep(0.5)  # let the agents publish for a moment
            broker = re.search(r"embedded Valkey \S+ at (\S+)", out.read_text())
            assert broker, out.read_text()
            assert len(_celery_on(broker.group(1))) >= 2
            demo.send_signal(signal.SIGINT)
            code = demo.wait(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    text = out.read_text()
    assert code == 130, text
    assert "stopped 2 workers" in text and "stopped embedded servers" in text, text
    assert not _celery_on(broker.group(1)), "workers left running"
    valkey_dir, pg_dir = str(data_dir / "valkey"), str(data_dir / "postgres")
    assert not processes(lambda argv, env: valkey_dir in argv), "valkey-server left running"
    assert not processes(lambda argv, env: argv[0].endswith("postgres") and pg_dir in argv), (
        "embedded PostgreSQL left running"
    )
