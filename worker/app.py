"""The Celery app: configuration, the `agentstore.apply` task, and per-process set-up."""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import threading
import time
from typing import Any

import orjson
import redis
from celery import Celery, Task, signals
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import serialization
from kombu.transport import TRANSPORT_ALIASES
from kombu.utils import json as kombu_json

from broker import deadletters, keys, sentinel, tracing, wire
from broker.connection import connect
from broker.sentinel import SentinelOptions, celery_ssl_options, sentinel_transport_options
from storage import backends
from storage.base import StorageBackend
from storage.config import load_settings
from storage.errors import ConfigError
from storage.factory import create_storage_client
from storage.retention import RetentionPolicy

from . import logs, metrics, tallies
from .apply import BatchApplier
from .bodies import decode_task_body, was_plain
from .lease import Heartbeat
from .reaper import Reaper, ReaperThread
from .retention import PrunerThread
from .settings import load_worker_settings

log = logging.getLogger(__name__)

_settings = load_settings()
if _settings.agentstore_backend == "memory":
    # The worker's memory is no one else's store: it would confirm every save, then lose it.
    raise ConfigError(
        "AGENTSTORE_BACKEND=memory is for tests in one process; a worker needs postgres or cosmos"
    )
_worker_settings = load_worker_settings()
BROKER_URL = _settings.celery_broker_url.get_secret_value()
# Imported by the main process, before the pool forks: its children append their batches'
# counts to the list this process drains (`worker.tallies`).
_MAIN_PID = os.getpid()
_sentinel = SentinelOptions.from_settings(_settings)

app = Celery("agentstore", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    result_backend=None,
    task_ignore_result=True,
    task_default_queue=keys.QUEUE,
    broker_connection_retry_on_startup=True,
    # Recovery does not depend on it (the reaper does that); it only bounds how long a
    # message stranded in kombu's `unacked` hash waits for kombu's own redelivery.
    broker_transport_options={"visibility_timeout": _worker_settings.visibility_timeout_s},
    worker_consumer="worker.app:Consumer",
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=True,
    task_track_started=False,
    worker_send_task_events=False,
)


_in_pool_child = False  # set in each pool child (`_init_process`): only a child applies ops


def _plain_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSON as it is. kombu's own decoder turns every object shaped `{"__type__": ...,
    "__value__": ...}` into a datetime, UUID, ... or fails on unknown tags: a user's payload
    of that shape was mangled or took its whole message to the dead letters. It also calls
    a Python hook per object, on a body Celery decodes twice (main process and child)."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if _in_pool_child:
        return decode_task_body(data)
    # The main process decodes a body only to look at it (Celery reads its shape and embed);
    # the child decodes it again. orjson reads it 2x faster; what it refuses (NaN, a lone
    # surrogate, UTF-16, malformed JSON) the json module reads, or refuses as it always did.
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


# In this process (and the pool's children, which it forks) only: producers never decode.
serialization.register(  # type: ignore[no-untyped-call]
    "json",
    kombu_json.dumps,
    _plain_json,
    content_type=wire.CONTENT_TYPE,
    content_encoding=wire.CONTENT_ENCODING,
)


if BROKER_URL.startswith(("redis://", "rediss://")):
    app.conf.broker_transport = "worker.transport:Transport"
elif sentinel.is_sentinel_url(BROKER_URL):
    app.conf.broker_transport = "worker.transport:SentinelTransport"
    # On a connection loss kombu moves to the URL's next Sentinel and picks that URL's
    # scheme's transport, not the configured one: the scheme must name ours too.
    TRANSPORT_ALIASES["sentinel"] = "worker.transport:SentinelTransport"
    _target = sentinel.parse(BROKER_URL, _sentinel)
    app.conf.broker_transport_options.update(sentinel_transport_options(_target))
    app.conf.broker_use_ssl = celery_ssl_options(_target)


class _Process:
    """What one worker process owns: Redis client, reaper, and (once reachable) the store."""

    def __init__(self) -> None:
        self.redis = connect(BROKER_URL, 10.0, _sentinel)
        reaper = Reaper(
            self.redis,
            _worker_settings.recovery_after_s,
            interval_s=_worker_settings.reaper_interval_s,
            chunk=_worker_settings.reaper_batch,
        )
        # Started before the store is opened: messages lost while the database was away
        # must be recovered even if no new message arrives to start anything else.
        self.reaper = ReaperThread(reaper, _worker_settings.reaper_interval_s)
        self.reaper.start()
        self.heartbeat = Heartbeat(self.redis, _worker_settings.recovery_after_s)
        self.heartbeat.start()
        self._store: StorageBackend | None = None
        self._store_lock = threading.Lock()
        chosen = backends.chosen(_settings)
        self.applier = BatchApplier(
            self.store,
            self.redis,
            _worker_settings,
            heartbeat=self.heartbeat,
            backend=chosen.name if chosen else "unknown",
            tally_list=None
            if _worker_settings.metrics_port is None
            else tallies.list_key(_MAIN_PID),
        )
        self.pruner = PrunerThread(
            self.store,
            self.redis,
            RetentionPolicy.from_settings(_settings),
            _worker_settings.prune_interval_s,
        )
        self.pruner.start()

    def store(self) -> StorageBackend:
        """The process's store (batcher and pruner), opened on first use; raises
        `StoreUnavailableError` while it cannot be reached."""
        with self._store_lock:
            if self._store is None:
                self._store = create_storage_client(_settings)
            return self._store

    def close(self) -> None:
        self.reaper.stop()
        self.heartbeat.stop()
        self.pruner.stop()
        if self._store is not None:
            self._store.close()
        self.redis.close()


_process: _Process | None = None
_process_lock = threading.Lock()


def _get_process() -> _Process:
    global _process
    with _process_lock:
        if _process is None:
            _process = _Process()
        return _process


def _init_process(**_: Any) -> None:
    global _in_pool_child
    _in_pool_child = True
    # After fork: connections made in the parent must never be shared with a child.
    metrics.WORKER_PROCESSES.set(1)
    process = _get_process()
    try:
        process.store()
    except Exception as exc:
        # Not fatal: the first task tries again, and its message stays pending until then.
        log.error("cannot open the store yet: %s", exc)
    # A batch allocates tens of thousands of short-lived objects, nearly all freed by
    # reference counting; the default thresholds ran a collection every 700 of them over
    # every long-lived object (Celery, pydantic schemas), ~25% of a child's CPU per op.
    # Frozen start-up objects are never scanned again; young ones are, every 50,000.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _close_process(**_: Any) -> None:
    global _process
    with _process_lock:
        if _process is not None:
            _process.close()
            _process = None


def _serve_metrics(**_: Any) -> None:
    # In the main process, before the pool forks: it sums every child's files (worker.metrics).
    port = _worker_settings.metrics_port
    if port is not None:
        client = connect(BROKER_URL, 5.0, _sentinel)
        registry = metrics.worker_registry(client, before=[tallies.TallyDrain(client)])
        metrics.serve(registry, port)
        log.info("serving Prometheus metrics on port %d at /metrics", port)


def _setup_logging(logger: logging.Logger, **_: Any) -> None:
    if _worker_settings.log_format == "json":
        logs.use_json(logger)


signals.worker_init.connect(_serve_metrics, weak=False)
signals.after_setup_logger.connect(_setup_logging, weak=False)
signals.after_setup_task_logger.connect(_setup_logging, weak=False)
signals.worker_process_init.connect(_init_process, weak=False)
signals.worker_process_shutdown.connect(_close_process, weak=False)


def _apply_ops(self: Task, *args: Any, **kwargs: Any) -> None:
    # Any arguments are accepted, so a malformed message is dead-lettered by our code
    # instead of failing in Celery's call and being republished forever.
    ops: object = args[0] if len(args) == 1 and not kwargs else {"args": args, "kwargs": kwargs}
    # Celery puts a message's headers on the request: our trace header, if the save had one,
    # and when the producer published it.
    traces = getattr(self.request, tracing.HEADER, None)
    published = wire.published_at(self.request.get("published"))
    plain = was_plain(ops)
    _get_process().applier.run(str(self.request.id), ops, traces, published, plain=plain)


apply_ops: Task = app.task(name=wire.TASK_NAME, bind=True, acks_late=True, ignore_result=True)(
    _apply_ops
)


# kombu's defaults, which Celery's consumer uses and no Celery setting changes, wait 2 s,
# then 4, 6... (up to 30) between rounds of reconnects to a lost broker. A Sentinel failover
# promotes a replica ~2.3 s after the kill: the try at 2 s missed it and the next came at 6 s.
# Short first waits find the new primary within a second of its promotion; a long outage
# still costs one round of connection attempts every 2 s per worker.
RECONNECT_BACKOFF = {"interval_start": 0.25, "interval_step": 0.25, "interval_max": 2.0}


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, but messages it refuses (pickle, unknown task, undecodable) are
    dead-lettered with their reason instead of only logged, and leave `pending`; and a lost
    broker connection is retried sooner (`RECONNECT_BACKOFF`)."""

    _dlq_redis: redis.Redis | None = None

    def ensure_connected(self, conn: Any) -> Any:
        # Celery calls `conn.ensure_connection(errback, max_retries, callback=...)` and
        # passes no intervals: give this connection ours (a caller's own still win).
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_BACKOFF)
        return super().ensure_connected(conn)

    def _dead_letter(self, message: Any, reason: str) -> None:
        try:
            headers = message.headers if isinstance(message.headers, dict) else {}
            mid = headers.get("id")
            mid = mid if isinstance(mid, str) and wire.is_message_id(mid) else None
            body = message.body
            raw = json.dumps(
                {
                    "content-type": str(message.content_type),
                    "headers": {k: str(v)[:200] for k, v in headers.items()},
                    "body": body.decode("utf-8", "replace")
                    if isinstance(body, bytes)
                    else str(body),
                }
            )
            if self._dlq_redis is None:
                self._dlq_redis = connect(BROKER_URL, 10.0, _sentinel)
            now = time.time()
            key, record = deadletters.message_record(raw, reason, mid, now)
            first = deadletters.settle(self._dlq_redis, [mid] if mid else [], [(key, record, now)])
            tallies.dead_lettered(mid, "malformed", first)
            log.error("dead-lettered message %s: %s", key, reason, extra={"message_id": key})
        except Exception:
            log.exception("could not dead-letter a refused message")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "not a task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, f"unknown task {message.headers.get('task')!r}"[:300])
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, f"refused: {type(exc).__name__}: {exc}"[:500])
        super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, f"undecodable: {type(exc).__name__}: {exc}"[:500])
        super().on_decode_error(message, exc)
