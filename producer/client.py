"""`Producer`: the `StorageClient` whose saves go through the queue and whose reads do not."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from broker import tracing, wire
from broker.errors import PublishError
from broker.publisher import Publisher
from broker.sentinel import SentinelOptions
from broker.wire import MAX_OPS_PER_MESSAGE, Batch
from storage import forks
from storage.base import StorageClient
from storage.config import Settings, check_broker_url, load_settings
from storage.factory import create_storage_client
from storage.ops import Op, OpName, encode_op

from .buffer import SendBuffer
from .metrics import ProducerMetrics, metrics_for
from .tracker import Tracker

log = logging.getLogger(__name__)


class Producer(StorageClient):
    """Publishes saves to the worker queue; reads straight from the configured store.

    `save_*` validate at the call (`storage.ValidationError`, nothing published) and return
    the op id. By default they publish durably: the op is in the broker, recorded for
    recovery, when the call returns. With `linger_ms > 0` they only buffer the op and return
    at once; a background thread publishes the buffer in batches (one task message per
    `max_batch` ops) at least every `linger_ms`. `flush()`, `close()` and interpreter exit
    publish what is buffered; a crash loses it (docs/GUARANTEES.md). Reads open a storage
    client on first use, so a publish-only producer needs no database credentials.

    Args:
        settings: as from `storage.load_settings()`; read from the environment if omitted.
        broker_url: overrides `CELERY_BROKER_URL` (default `redis://127.0.0.1:6379/0`).
        publish_timeout: seconds after which an unreachable broker raises `PublishError`
            (buffered: after which one background attempt fails and is retried). With
            `AGENTSTORE_PUBLISH_REPLICAS` > 0, also the time the replicas have to
            acknowledge a publish before `PublishError` (the op may then still be applied).
        max_tracked: how many unconfirmed ops `wait()` remembers at most.
        linger_ms: 0 (default) publishes each save before it returns; more buffers saves
            for up to this many milliseconds.
        max_batch: buffered ops per task message.
        max_buffer: buffered ops not yet published, at most; a save then blocks.
        buffer_timeout: seconds a save blocks on a full buffer before `BufferFullError`.
        metrics: True counts publishes, publish errors and latency and buffered ops in
            prometheus-client's default registry, or give a `CollectorRegistry`; the
            application serves it (README "Observe it").
        **overrides: other settings, as for `load_settings`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str | None = None,
        publish_timeout: float = 5.0,
        max_tracked: int = 100_000,
        linger_ms: float = 0.0,
        max_batch: int = MAX_OPS_PER_MESSAGE,
        max_buffer: int = 100_000,
        buffer_timeout: float = 5.0,
        metrics: bool | CollectorRegistry = False,
        **overrides: Any,
    ) -> None:
        self._settings, url = configure(settings, broker_url, linger_ms, max_batch, overrides)
        self._publisher = Publisher(url, publish_timeout, **publisher_options(self._settings))
        self._max_tracked = max_tracked
        self._tracker = Tracker(self._publisher.redis, max_tracked)
        self._reader: StorageClient | None = None
        self._reader_lock = threading.Lock()
        self._closed = False
        self._metrics: ProducerMetrics | None = None
        if metrics is not False:
            self._metrics = metrics_for(None if metrics is True else metrics)
            self._metrics.watch(self)
        self._buffer: SendBuffer | None = None
        if linger_ms > 0:
            self._buffer = SendBuffer(
                self._publish_batch,
                linger_s=linger_ms / 1000,
                max_batch=max_batch,
                max_buffer=max_buffer,
                buffer_timeout=buffer_timeout,
            )
            _buffered.add(self)
        forks.watch(self)

    def __repr__(self) -> str:
        return f"Producer(broker={self._publisher.masked_url!r})"

    def _submit(self, name: OpName, args: dict[str, Any], version: str | int | None) -> str:
        with tracing.save_span(name) as trace:
            op_id, text = encode_op(name, args, version=version)
            if self._buffer is not None:
                if self._closed:
                    raise RuntimeError("Producer is closed")
                self._buffer.add(op_id, text, trace)
                return op_id
            self._publish(single_message(op_id, text, trace))
            return op_id

    def _publish_batch(self, batch: Batch) -> None:
        # The sender thread's publish: the same atomic Lua publish as a durable save.
        self._send(batch)
        for mid, _, op_ids in batch:
            self._tracker.add(op_ids, mid)

    def flush(self, timeout: float = 30.0) -> None:
        """Publish every buffered op now; returns once the broker has them all.

        Raises `PublishError` (with the broker's last error) if they could not all be
        published within `timeout` seconds; they stay buffered and are retried. Without
        buffering there is nothing to do.
        """
        if self._buffer is not None:
            self._buffer.flush(timeout)

    @property
    def buffered(self) -> int:
        """Ops saved but not yet published (always 0 without buffering)."""
        return 0 if self._buffer is None else len(self._buffer)

    @property
    def publish_error(self) -> PublishError | None:
        """The background publisher's last failure, while its buffer has not drained since."""
        return None if self._buffer is None else self._buffer.error

    def apply(self, ops: Sequence[Op]) -> None:
        """Publish already validated ops, many per message, all in one atomic publish."""
        batch = messages_of(ops)
        if batch:
            self._publish(batch)

    def apply_encoded(self, op_id: str, text: str) -> None:
        """Publish one op already validated and encoded, `(op id, wire JSON text)` as
        `storage.ops.encode_op` returns them, as its own message (`wait([op_id])` works)."""
        self._publish(single_message(op_id, text))

    def _publish(self, batch: Batch) -> None:
        if self._closed:
            raise RuntimeError("Producer is closed")
        self._send(batch)
        for mid, _, op_ids in batch:
            self._tracker.add(op_ids, mid)

    def _send(self, batch: Batch) -> None:
        if self._metrics is None:  # `_send_unmeasured`, one call less per save
            self._publisher.publish([(mid, message) for mid, message, _ in batch])
        else:
            self._metrics.publish(self._send_unmeasured, batch)

    def _send_unmeasured(self, batch: Batch) -> None:
        self._publisher.publish([(mid, message) for mid, message, _ in batch])

    def wait(self, op_ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """Block until a worker confirmed the ops applied (readable); by default all this
        producer saved and has not seen applied.

        Buffered ops are published first (`flush`). Raises `DeadLetteredError` naming every
        dead-lettered op (again on every call, until replayed or purged), `LostOpsError`
        naming ops the broker lost (neither queued nor confirmed), `TimeoutError` after
        `timeout` seconds (`BrokerUnavailableError` if Redis was unreachable), and
        `PublishError` if buffered ops could not be published in that time. Polls Redis with
        backoff, never the database.
        """
        if self._buffer is not None and len(self._buffer):
            deadline = time.monotonic() + timeout
            if op_ids is not None:
                op_ids = list(op_ids)
            self._buffer.flush(timeout)
            timeout = max(0.0, deadline - time.monotonic())
        self._tracker.wait(op_ids, timeout)

    def is_unconfirmed(self, op_id: str) -> bool:
        """Whether `op_id`, published by this producer, is not yet seen applied (an applied
        op is forgotten once a `wait` or the tracker's sweep sees it)."""
        return op_id in self._tracker

    @property
    def unconfirmed(self) -> int:
        """Saved ops this producer has not yet seen applied: buffered, queued, dead-lettered."""
        return len(self._tracker) + self.buffered

    def _store(self) -> StorageClient:
        reader = self._reader  # set once, and back to None only by close()
        if reader is not None:
            return reader
        with self._reader_lock:
            if self._closed:
                raise RuntimeError("Producer is closed")
            if self._reader is None:
                self._reader = create_storage_client(self._settings)
            return self._reader

    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        return self._store().get_state(agent_id, state_id)

    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        return self._store().get_task(agent_id, task_id)

    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return self._store().get_conversation_history(conversation_id, limit)

    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        return self._store().get_transactions(case_id)

    def list_states(self, agent_id: str) -> list[str]:
        return self._store().list_states(agent_id)

    def list_tasks(self, agent_id: str) -> list[str]:
        return self._store().list_tasks(agent_id)

    def close(self, timeout: float = 30.0) -> None:
        """Publish what is buffered, then close the broker connections and the reader.

        Raises `PublishError` if buffered ops could not be published within `timeout`
        seconds: they are lost, and the error says how many.
        """
        with self._reader_lock:
            if self._closed:
                return
            self._closed = True
            reader, self._reader = self._reader, None
        _buffered.discard(self)
        left, error = 0, None
        if self._buffer is not None:
            error = self._buffer.error
            left = self._buffer.stop(timeout)
            error = self._buffer.error or error
        self._publisher.close()
        if reader is not None:
            reader.close()
        if left:
            raise lost_at_close(left, timeout, error)

    def _after_fork_in_child(self) -> None:
        # The child tracks and buffers only its own saves; the parent sends its own buffer.
        # (The reader, a storage client, opens its own connections in the child by itself.)
        self._reader_lock = threading.Lock()
        self._tracker = Tracker(self._publisher.redis, self._max_tracked)
        if self._buffer is not None:
            self._buffer.after_fork_in_child()


def configure(
    settings: Settings | None,
    broker_url: str | None,
    linger_ms: float,
    max_batch: int,
    overrides: dict[str, Any],
) -> tuple[Settings, str]:
    """A producer's settings and broker URL, its options checked (`ValueError`)."""
    if linger_ms < 0:
        raise ValueError("linger_ms must not be negative")
    if not 1 <= max_batch <= MAX_OPS_PER_MESSAGE:
        raise ValueError(f"max_batch must be between 1 and {MAX_OPS_PER_MESSAGE}")
    settings = settings or load_settings(**overrides)
    if broker_url is not None:
        check_broker_url("broker_url", broker_url)
    return settings, broker_url or settings.celery_broker_url.get_secret_value()


def publisher_options(settings: Settings) -> dict[str, Any]:
    """What a producer's publisher takes from settings: replicas to wait for, Sentinel."""
    return {
        "replicas": settings.agentstore_publish_replicas,
        "sentinel": SentinelOptions.from_settings(settings),
    }


def single_message(op_id: str, text: str, trace: tracing.Carrier | None = None) -> Batch:
    """One op as its own message, which takes the op's id: `wait([op_id])` then works from
    any producer in any process."""
    return [(op_id, wire.build_message(op_id, [text], None if trace is None else [trace]), [op_id])]


def messages_of(ops: Sequence[Op]) -> Batch:
    """Validated ops packed many per message, in bounded messages; a lone op goes as a save
    does (`single_message`), so any producer can wait for it by its id."""
    if len(ops) == 1:
        return single_message(ops[0].id, ops[0].model_dump_json())
    return wire.build_messages([op.id for op in ops], [op.model_dump_json() for op in ops])


def lost_at_close(left: int, timeout: float, error: PublishError | None) -> PublishError:
    exc = PublishError(
        f"{left:,} buffered op(s) were not published within {timeout:g}s and are lost"
        + (f": {error}" if error else "")
    )
    exc.__cause__ = error
    return exc


# Buffered producers alive in this process, for the exit flush.
_buffered: weakref.WeakSet[Producer] = weakref.WeakSet()
EXIT_TIMEOUT_S = 10.0


def _flush_at_exit() -> None:
    for producer in list(_buffered):
        try:
            producer.close(timeout=EXIT_TIMEOUT_S)
        except Exception as exc:
            log.error("agentstore: at exit, %s", exc)


atexit.register(_flush_at_exit)
