"""Publish latency of `Producer.save_state` vs a raw redis-py LPUSH of the same message, and
one worker's (concurrency 2) drain rate into PostgreSQL, in one run.

Starts its own redis-server (no persistence) on a free loopback port and its own database,
and removes both afterwards:

    .venv/bin/python bench/bench_queue.py [--publishes 5000] [--drain 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from producer import Producer, wire  # noqa: E402
from storage import PostgreSQLClient  # noqa: E402
from storage.ops import make_op  # noqa: E402

STATE = {"step": 12, "status": "thinking", "notes": "x" * 120, "scores": [0.1, 0.2, 0.3]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    qs = statistics.quantiles(samples_ns, n=100)
    return {"p50_us": qs[49] / 1000, "p99_us": qs[98] / 1000}


def bench_publish(url: str, n: int) -> dict[str, object]:
    raw = redis.Redis.from_url(url)
    op = make_op("save_state", {"agent_id": "bench", "state_id": "s", "state": STATE})
    message = wire.build_message(op.id, [op.model_dump_json()])
    ours: list[int] = []
    lpush: list[int] = []
    with Producer(broker_url=url) as prod:
        for i in range(n + 500):
            # Interleaved, so both see the same server and machine load.
            t0 = time.perf_counter_ns()
            raw.lpush("bench:raw", message)
            t1 = time.perf_counter_ns()
            prod.save_state("bench", f"s{i % 100}", STATE)
            t2 = time.perf_counter_ns()
            if i >= 500:
                lpush.append(t1 - t0)
                ours.append(t2 - t1)
    raw.close()
    result: dict[str, object] = {
        "n": n,
        "message_bytes": len(message),
        "lpush": percentiles(lpush),
        "producer_save_state": percentiles(ours),
    }
    result["p50_ratio"] = (
        result["producer_save_state"]["p50_us"] / result["lpush"]["p50_us"]  # type: ignore[index]
    )
    return result


def bench_drain(url: str, admin_url: str, n: int) -> dict[str, object]:
    name = f"agentstore_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    db_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for reading after a failure
        prefix="bench-worker-", suffix=".log", delete=False
    )
    proc = None
    try:
        PostgreSQLClient(postgres_connection_string=db_url).close()  # schema first
        client = redis.Redis.from_url(url)
        client.flushall()
        with Producer(broker_url=url) as prod:
            for i in range(n):
                prod.save_state("bench", f"s{i}", {"i": i, **STATE})
        env = {**os.environ, "CELERY_BROKER_URL": url, "POSTGRES_CONNECTION_STRING": db_url}
        args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--concurrency", "2"]
        args += ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        first = None
        while True:
            left = client.zcard(wire.PENDING_KEY)
            now = time.monotonic()
            if first is None and left < n:
                first = now
            if left == 0:
                break
            if now > deadline or proc.poll() is not None:
                raise RuntimeError(f"drain did not finish; see {log.name}")
            time.sleep(0.005)
        assert first is not None
        elapsed = time.monotonic() - first
        with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM agent_states")
            (rows,) = cur.fetchone()  # type: ignore[misc]
        assert rows == n, f"{rows} rows for {n} saves"
        return {"messages": n, "seconds": elapsed, "saves_per_s": n / elapsed}
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--publishes", type=int, default=5000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    opts = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        results = {
            "publish": bench_publish(url, opts.publishes),
            "drain": bench_drain(url, opts.pg, opts.drain),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "queue.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
