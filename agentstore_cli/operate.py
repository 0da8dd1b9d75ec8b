"""Operating a deployment: health checks, queue statistics, dead letters."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys
from broker.connection import connect
from broker.sentinel import (
    SentinelOptions,
    celery_ssl_options,
    is_sentinel_url,
    options_from_environment,
    sentinel_transport_options,
)
from broker.sentinel import parse as parse_sentinel_url
from broker.stats import exposition, queue_stats
from broker.topology import SentinelView, sentinel_view
from storage import backends
from storage.config import Settings, mask_url
from storage.errors import SchemaNotReadyError, StorageError
from storage.factory import create_storage_client

HEALTH_PROBE_ID = "__health__"


@dataclass(frozen=True)
class Check:
    """One health check's outcome."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name:<8} {'OK' if self.ok else 'FAIL':<4}  {self.detail}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def check_broker(url: str, timeout: float, sentinel: SentinelOptions | None = None) -> Check:
    """Redis PING at the broker URL (through Sentinel: at the primary)."""
    where = mask_url(url)
    began = time.monotonic()
    client = connect(url, timeout, sentinel)
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check("broker", False, f"{where}: {_short(exc)}")
    finally:
        client.close()
    return Check("broker", True, f"{where} (PING {1000 * (time.monotonic() - began):.1f} ms)")


def check_sentinel(url: str, sentinel: SentinelOptions, replicas: int, timeout: float) -> Check:
    """The Sentinels know a primary, and it has the replicas durable saves wait for
    (AGENTSTORE_PUBLISH_REPLICAS) online."""
    view = sentinel_view(url, sentinel, timeout)
    if view.primary is None:
        return Check("sentinel", False, f"no primary for {view.master!r}: {view.error}")
    detail = (
        f"primary {view.primary}, {view.online} of {len(view.replicas)} replica(s) online"
        f" ({_lags(view)}), {view.sentinels} Sentinel(s) answered"
    )
    if view.online < replicas:
        return Check(
            "sentinel", False, f"{detail}; AGENTSTORE_PUBLISH_REPLICAS={replicas} needs more"
        )
    return Check("sentinel", True, detail)


def _lags(view: SentinelView) -> str:
    return ", ".join(
        f"{r.address} {'up' if r.online else 'DOWN'} lag {r.lag_bytes} B/{r.lag_s} s"
        for r in view.replicas
    )


def check_store(settings: Settings) -> Check:
    """Open the configured store and read one (absent) state; writes nothing.

    A store that answers but whose schema is not created yet passes, saying so: a fresh
    deployment's workers create it when they first open the store.
    """
    began = time.monotonic()
    try:
        with create_storage_client(settings, create_schema=False) as store:
            store.get_state(HEALTH_PROBE_ID, HEALTH_PROBE_ID)
    except SchemaNotReadyError as exc:
        return Check("store", True, f"{backends.describe(settings)} ({exc})")
    except StorageError as exc:
        return Check("store", False, str(exc).splitlines()[0][:500])
    elapsed = 1000 * (time.monotonic() - began)
    return Check("store", True, f"{backends.describe(settings)} (read {elapsed:.0f} ms)")


def ping_workers(
    url: str, timeout: float, sentinel: SentinelOptions | None = None
) -> dict[str, list[str]]:
    """Workers answering a Celery ping over the broker, each with the queues it consumes."""
    import celery

    app = celery.Celery("agentstore-cli", broker=url, set_as_current=False)
    if is_sentinel_url(url):
        target = parse_sentinel_url(url, sentinel or options_from_environment())
        app.conf.broker_transport_options = sentinel_transport_options(target)
        app.conf.broker_use_ssl = celery_ssl_options(target)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_timeout = timeout
    try:
        inspect = app.control.inspect(timeout=timeout)
        names = sorted(inspect.ping() or {})
        if not names:
            return {}
        # Ask only the workers that answered, and stop waiting once each has replied.
        queues = app.control.inspect(timeout=timeout, destination=names, limit=len(names))
        active: dict[str, list[dict[str, Any]]] = queues.active_queues() or {}
        return {name: sorted(q.get("name", "?") for q in active.get(name, [])) for name in names}
    finally:
        app.close()


def check_workers(url: str, timeout: float, sentinel: SentinelOptions | None = None) -> Check:
    """At least one worker answers and consumes the agentstore queue."""
    try:
        workers = ping_workers(url, timeout, sentinel)
    except Exception as exc:  # kombu and celery raise many types for an unreachable broker
        return Check("workers", False, f"{mask_url(url)}: {_short(exc)}")
    ours = [name for name, queues in workers.items() if keys.QUEUE in queues]
    if ours:
        return Check("workers", True, f"{len(ours)} consuming {keys.QUEUE!r}: {', '.join(ours)}")
    if workers:
        return Check("workers", False, f"{len(workers)} answered but none consumes {keys.QUEUE!r}")
    return Check("workers", False, f"no worker answered a ping within {timeout:g} s")


class _Background:
    """Runs a check in a daemon thread; `result(deadline)` waits at most until `deadline`.

    Drivers retry on their own schedules (Cosmos DB for tens of seconds); a health check
    answers in time and leaves a straggler to die with the process.
    """

    def __init__(self, name: str, run: Callable[[], Check]) -> None:
        self._name = name
        self._box: list[Check] = []
        self._thread = threading.Thread(
            target=self._target, args=(run,), name=f"health-{name}", daemon=True
        )
        self._thread.start()

    def _target(self, run: Callable[[], Check]) -> None:
        try:
            self._box.append(run())
        except Exception as exc:
            self._box.append(Check(self._name, False, _short(exc)))

    def result(self, deadline: float, timeout: float) -> Check:
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        return (
            self._box[0]
            if self._box
            else Check(self._name, False, f"no answer within {timeout:g} s")
        )


def run_health(settings: Settings, workers: bool = True, timeout: float = 8.0) -> list[Check]:
    """Broker, store and (unless `workers` is False) worker checks, all within `timeout` s.

    The store is checked while the broker is; the workers only once the broker answered.
    """
    deadline = time.monotonic() + timeout
    url = settings.celery_broker_url.get_secret_value()
    sentinel = SentinelOptions.from_settings(settings)
    store = _Background("store", lambda: check_store(settings))
    broker = _Background("broker", lambda: check_broker(url, min(timeout, 5.0), sentinel))
    topology = None
    if is_sentinel_url(url):
        replicas = settings.agentstore_publish_replicas
        topology = _Background(
            "sentinel", lambda: check_sentinel(url, sentinel, replicas, min(timeout, 5.0))
        )
    checks = [broker.result(deadline, timeout)]
    if topology is not None:
        checks.append(topology.result(deadline, timeout))
    pinged = None
    if workers and checks[0].ok:
        # The ping waits its whole timeout for replies: leave it what the deadline allows.
        wait = max(min(2.0, deadline - time.monotonic() - 0.5), 0.1)
        pinged = _Background("workers", lambda: check_workers(url, wait, sentinel))
    checks.append(store.result(deadline, timeout))
    if pinged is not None:
        checks.append(pinged.result(deadline, timeout))
    elif workers:
        checks.append(Check("workers", False, "broker unreachable"))
    return checks


class WorkerPingError(Exception):
    """The broker answered but the Celery ping over it failed."""


def applied_per_s(client: redis.Redis, sample_s: float) -> float:
    """Ops the workers applied per second, from their counter sampled `sample_s` apart."""
    before = int(client.get(keys.APPLIED_KEY) or 0)
    started = time.monotonic()
    time.sleep(sample_s)
    after = int(client.get(keys.APPLIED_KEY) or 0)
    return (after - before) / (time.monotonic() - started)


def collect_stats(
    url: str,
    workers: bool = True,
    sample_s: float = 1.0,
    sentinel: SentinelOptions | None = None,
) -> dict[str, Any]:
    """`broker.stats.queue_stats`, applied ops/s over `sample_s`, the workers consuming the
    queue (None when not asked) and, behind Sentinels only, their view (`sentinel`)."""
    client = connect(url, 5.0, sentinel)
    try:
        numbers: dict[str, Any] = dataclasses.asdict(queue_stats(client))
        numbers["applied_per_s"] = round(applied_per_s(client, sample_s), 1)
    finally:
        client.close()
    if is_sentinel_url(url):
        options = sentinel or options_from_environment()
        numbers["sentinel"] = sentinel_view(url, options, 5.0).as_dict()
    names: list[str] | None = None
    if workers:
        try:
            answered = ping_workers(url, 2.0, sentinel)
        except Exception as exc:  # kombu and celery raise many types for a broker problem
            raise WorkerPingError(f"worker ping failed: {_short(exc)}") from None
        names = [name for name, queues in answered.items() if keys.QUEUE in queues]
    numbers["workers"] = None if names is None else len(names)
    numbers["worker_names"] = names
    return numbers


def prometheus_stats(url: str, sentinel: SentinelOptions | None = None) -> str:
    """The broker's gauges in Prometheus' text format; `agentstore_broker_up 0` alone while
    the broker does not answer."""
    client = connect(url, 5.0, sentinel)
    try:
        return exposition(client).decode()
    finally:
        client.close()


def stats_lines(numbers: dict[str, Any]) -> list[str]:
    """`collect_stats` for humans: name, value, what it means."""
    names = numbers["worker_names"]
    rows = [
        ("queue depth", numbers["queued"], f"LLEN {keys.QUEUE}"),
        ("queued ops", numbers["queued_ops"], "ops in the queued messages"),
        ("pending", numbers["pending"], "published, not yet applied or dead-lettered"),
        (
            "oldest (s)",
            round(numbers["oldest_pending_s"], 1),
            "since the oldest pending was published",
        ),
        ("in flight", numbers["unacked"], "delivered to a worker, not yet acknowledged"),
        ("dead letters", numbers["dead_letters"], "agentstore dlq list"),
        ("workers", "-" if names is None else len(names), ", ".join(names or [])),
        ("applied ops/s", numbers["applied_per_s"], "sampled over the last second"),
    ]
    view = numbers.get("sentinel")
    if view is not None:
        rows.append(("primary", view["primary"] or "NONE", f"Sentinel master {view['master']!r}"))
        for replica in view["replicas"]:
            state = "online" if replica["online"] else "DOWN"
            lag = f"lag {replica['lag_bytes']} bytes, {replica['lag_s']} s since its last ack"
            rows.append(("replica", replica["address"], f"{state}, {lag}"))
    return [f"{name:<14} {value:>8}  {note}".rstrip() for name, value, note in rows]


def summarize_dead_letter(record: dict[str, Any]) -> str:
    """One line for `dlq list`: id, last failure, attempts, op, error."""
    op = record.get("op")
    what = op.get("op", "?") if isinstance(op, dict) else "malformed message"
    when = record.get("last_failure")
    stamp = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
        if isinstance(when, int | float)
        else "?"
    )
    error = " ".join(str(record.get("error", "")).split())
    if len(error) > 120:
        error = error[:117] + "..."
    return f"{record.get('id')}  {stamp}Z  x{record.get('attempts', '?')}  {what}  {error}"
