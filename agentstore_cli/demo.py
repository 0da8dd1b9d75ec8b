"""`python -m agentstore_cli.demo` (what `make demo` runs): the whole queue path, end to end.

Finds PostgreSQL and Redis (configured, local or embedded), starts real Celery workers,
lets simulated agents save states, tasks, conversation messages and transactions
concurrently through `Producer`, waits until the workers applied them, reads everything
back and checks it exactly. Exits 0 only if every save is verified; stops everything it
started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from producer import Producer

from .embedded import Services, resolve_services
from .launch import CeleryWorker

DEFAULT_DATA_DIR = Path(".agentstore/demo")
WORKER_READY_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 15.0
APPLY_TIMEOUT_S = 60.0
TASKS_PER_AGENT = 4


def start_workers(count: int, env: dict[str, str], log_dir: Path) -> list[CeleryWorker]:
    """Start `count` single-process Celery workers and wait until each says it is ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    workers: list[CeleryWorker] = []
    try:
        for i in range(1, count + 1):
            log_path = log_dir / f"worker-{i}.log"
            workers.append(CeleryWorker(env, log_path, concurrency=1, name=f"demo{i}-{run}"))
        for worker in workers:
            worker.wait_ready(WORKER_READY_TIMEOUT_S)
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[CeleryWorker]) -> None:
    """Warm shutdown (SIGTERM: finish the batch in hand), then SIGKILL what is left."""
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for worker in workers:
        worker.stop(timeout=max(0.1, deadline - time.monotonic()))


@dataclass
class Expected:
    """What the store must hold after the run, built while publishing."""

    states: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tasks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    conversations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    transactions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class AgentRun:
    """One agent's publishing: what it saved and how long each publish took."""

    expected: Expected = field(default_factory=Expected)
    latencies: list[float] = field(default_factory=list)
    saves: int = 0
    error: BaseException | None = None


def _timed(run: AgentRun, publish: Callable[..., object], *args: Any) -> None:
    started = time.perf_counter()
    publish(*args)
    run.latencies.append(time.perf_counter() - started)
    run.saves += 1


def run_agent(
    producer: Producer, agent_id: str, rounds: int, start: threading.Barrier, stop: threading.Event
) -> AgentRun:
    """Publish `rounds` rounds of one state, one task, one message and one transaction."""
    run = AgentRun()
    conversation_id = f"{agent_id}/conversation"
    case_id = f"{agent_id}/case"
    messages = run.expected.conversations.setdefault(conversation_id, [])
    transactions = run.expected.transactions.setdefault(case_id, [])
    start.wait()
    for step in range(rounds):
        if stop.is_set():
            break
        state = {"step": step, "goal": "review case", "notes": ["é", "✓", step]}
        task_id = f"task-{step % TASKS_PER_AGENT}"
        task = {"status": "done" if step >= rounds - TASKS_PER_AGENT else "running", "at": step}
        message = {"role": ("user", "assistant")[step % 2], "content": f"turn {step} · café"}
        # Money as integer cents: an integral float (2.0) would come back from JSON as 2.
        transaction = {"id": f"t{step:04d}", "amount_cents": step * 125, "currency": "EUR"}
        _timed(run, producer.save_state, agent_id, "plan", state)
        run.expected.states[(agent_id, "plan")] = state
        _timed(run, producer.save_task, agent_id, task_id, task)
        run.expected.tasks[(agent_id, task_id)] = task
        _timed(run, producer.save_conversation, conversation_id, message)
        messages.append(message)
        _timed(run, producer.save_transactions, case_id, [transaction])
        transactions.append(transaction)
    return run


def publish_concurrently(
    producer: Producer, run_id: str, agents: int, rounds: int, stop: threading.Event
) -> list[AgentRun]:
    """Run `agents` agent threads at once; re-raise the first error one of them hit."""
    start = threading.Barrier(agents)
    runs: list[AgentRun] = [AgentRun() for _ in range(agents)]

    def body(i: int) -> None:
        try:
            runs[i] = run_agent(producer, f"{run_id}/agent-{i}", rounds, start, stop)
        except BaseException as exc:
            runs[i].error = exc
            stop.set()
            start.abort()

    # Daemon threads: after a Ctrl-C the demo stops them via `stop` but never waits on them.
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.2)  # short joins so Ctrl-C is handled at once
    for run in runs:
        if run.error is not None and not isinstance(run.error, threading.BrokenBarrierError):
            raise run.error
    return runs


def verify(producer: Producer, expected: Expected) -> list[str]:
    """Read everything back through the producer; one line per difference."""
    failures: list[str] = []

    def check(what: str, want: object, got: object) -> None:
        if want != got:
            failures.append(f"{what}: expected {_short(want)}, got {_short(got)}")

    for (agent_id, state_id), state in expected.states.items():
        check(f"state {agent_id}/{state_id}", state, producer.get_state(agent_id, state_id))
    for (agent_id, task_id), task in expected.tasks.items():
        check(f"task {agent_id}/{task_id}", task, producer.get_task(agent_id, task_id))
    for conversation_id, messages in expected.conversations.items():
        history = producer.get_conversation_history(conversation_id)
        if len(history) != len(messages):
            failures.append(
                f"conversation {conversation_id}: {len(history)} messages, expected {len(messages)}"
            )
        check(f"conversation {conversation_id} (in order)", messages, history)
    for case_id, transactions in expected.transactions.items():
        stored = producer.get_transactions(case_id)
        ids = [t.get("id") for t in stored]
        if len(ids) != len(set(ids)):
            failures.append(f"case {case_id}: duplicate transaction ids")
        check(f"transactions of {case_id} (in order)", transactions, stored)
    return failures


def _short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _merge(runs: Sequence[AgentRun]) -> Expected:
    merged = Expected()
    for run in runs:
        merged.states.update(run.expected.states)
        merged.tasks.update(run.expected.tasks)
        merged.conversations.update(run.expected.conversations)
        merged.transactions.update(run.expected.transactions)
    return merged


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (not empty), `fraction` in [0, 1]."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agentstore_cli.demo",
        description="Simulated agents save through the queue; real workers apply; all is verified.",
    )
    parser.add_argument("--agents", type=int, default=8, help="concurrent agents (default 8)")
    parser.add_argument("--rounds", type=int, default=50, help="rounds of 4 saves per agent")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes to start (default 2); 0 uses workers already running",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"worker logs and embedded servers' data (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="use embedded PostgreSQL and Valkey even if others are configured or running",
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or args.rounds < 1 or args.workers < 0:
        parser.error("--agents and --rounds must be at least 1, --workers at least 0")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. `docker stop`) takes the same path as Ctrl-C: stop what we started.
    raise KeyboardInterrupt


def _worker_env(services: Services) -> dict[str, str]:
    env = dict(os.environ)
    env["CELERY_BROKER_URL"] = services.redis.url
    env["POSTGRES_CONNECTION_STRING"] = services.postgres.url
    return env


def run_demo(args: argparse.Namespace, stack: ExitStack, stop: threading.Event) -> int:
    """The demo proper; everything it starts is registered on `stack` to be stopped."""
    print("agentstore demo")
    if args.embedded:
        services = resolve_services(
            args.data_dir, environ={}, dotenv=None, local_postgres=None, local_redis=None
        )
    else:
        services = resolve_services(args.data_dir)
    stack.callback(_announce, "stopped embedded servers", services)
    stack.callback(services.stop)
    for line in services.lines():
        print(f"  {line}")
    if args.workers:
        workers = start_workers(args.workers, _worker_env(services), args.data_dir)
        stack.callback(_say, f"stopped {len(workers)} workers")
        stack.callback(stop_workers, workers)
        print(
            f"  workers: {len(workers)} x `celery -A worker worker --concurrency 1`"
            f" (logs in {args.data_dir}/worker-*.log)"
        )
    else:
        print("  workers: none started; using the workers already consuming the queue")

    producer = Producer(
        broker_url=services.redis.url, postgres_connection_string=services.postgres.url
    )
    stack.callback(producer.close)
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    runs = publish_concurrently(producer, run_id, args.agents, args.rounds, stop)
    published = time.perf_counter() - started
    saves = sum(r.saves for r in runs)
    latencies = [lat for r in runs for lat in r.latencies]
    print(
        f"published {saves} saves from {args.agents} agents in {published:.2f} s"
        f" ({saves / published:,.0f} saves/s); publish latency"
        f" p50 {percentile(latencies, 0.5) * 1000:.2f} ms,"
        f" p99 {percentile(latencies, 0.99) * 1000:.2f} ms"
    )
    try:
        producer.wait(timeout=APPLY_TIMEOUT_S)
    except TimeoutError as exc:
        print(f"FAILED: not all saves were applied: {exc}")
        return 1
    applied = time.perf_counter() - started
    print(
        f"applied all {saves} saves in {applied:.2f} s end to end ({saves / applied:,.0f} saves/s)"
    )

    expected = _merge(runs)
    failures = verify(producer, expected)
    if failures:
        print(f"FAILED: {len(failures)} differences between what was saved and what is stored:")
        for line in failures[:10]:
            print(f"  {line}")
        return 1
    messages = sum(len(m) for m in expected.conversations.values())
    transactions = sum(len(t) for t in expected.transactions.values())
    print(
        f"all {saves} saves verified: {len(expected.states)} states, {len(expected.tasks)} tasks,"
        f" {messages} messages in {len(expected.conversations)} conversations (in order, no"
        f" duplicates), {transactions} transactions in {len(expected.transactions)} cases"
    )
    return 0


def _say(text: str) -> None:
    print(text)


def _announce(text: str, services: Services) -> None:
    if any(s.origin == "embedded" for s in (services.postgres, services.redis)):
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 if every save was verified, 1 if not, 130 when interrupted."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stop = threading.Event()
    code = 1
    with ExitStack() as stack:
        try:
            code = run_demo(args, stack, stop)
        except KeyboardInterrupt:
            print("interrupted; stopping what the demo started", file=sys.stderr)
            code = 130
        except Exception as exc:
            print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            stop.set()
            # A second Ctrl-C must not cut the clean-up short and leave servers running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return code


if __name__ == "__main__":
    sys.exit(main())
