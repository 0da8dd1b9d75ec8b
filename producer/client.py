"""`Producer`: the `StorageClient` whose saves go through the queue and whose reads do not."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from storage.base import StorageClient
from storage.config import Settings, load_settings
from storage.factory import create_storage_client
from storage.ops import Op, OpName, make_op

from . import wire
from .publisher import Publisher
from .tracker import Tracker

# Ops per message on the batch path: one message is one task, and bounded in size.
MAX_OPS_PER_MESSAGE = 500
MAX_MESSAGE_CHARS = 4_000_000


class Producer(StorageClient):
    """Publishes saves to the worker queue; reads straight from the configured store.

    `save_*` validate at the call (`storage.ValidationError`, nothing published), publish
    durably (the op is in the broker, recorded for recovery, when the call returns) and
    return the op id. Reads open a storage client on first use, so a publish-only producer
    needs no database credentials.

    Args:
        settings: as from `storage.load_settings()`; read from the environment if omitted.
        broker_url: overrides `CELERY_BROKER_URL` (default `redis://127.0.0.1:6379/0`).
        publish_timeout: seconds after which an unreachable broker raises `PublishError`.
        max_tracked: how many unconfirmed ops `wait()` remembers at most.
        **overrides: other settings, as for `load_settings`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str | None = None,
        publish_timeout: float = 5.0,
        max_tracked: int = 100_000,
        **overrides: Any,
    ) -> None:
        self._settings = settings or load_settings(**overrides)
        url = broker_url or self._settings.celery_broker_url.get_secret_value()
        self._publisher = Publisher(url, publish_timeout)
        self._tracker = Tracker(self._publisher.redis, max_tracked)
        self._reader: StorageClient | None = None
        self._reader_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Producer(broker={self._publisher.masked_url!r})"

    def _submit(self, name: OpName, args: dict[str, Any], version: str | None) -> str:
        op = make_op(name, args, version=version)
        # A single-op message takes its op's id, so `wait([op_id])` works from any process.
        self._publish([(op.id, wire.build_message(op.id, [op.model_dump_json()]), [op.id])])
        return op.id

    def apply(self, ops: Sequence[Op]) -> None:
        """Publish already validated ops, many per message, all in one atomic publish."""
        batch = []
        chunk: list[Op] = []
        texts: list[str] = []
        size = 0
        for op in ops:
            text = op.model_dump_json()
            if chunk and (
                len(chunk) >= MAX_OPS_PER_MESSAGE or size + len(text) > MAX_MESSAGE_CHARS
            ):
                batch.append(self._message(chunk, texts))
                chunk, texts, size = [], [], 0
            chunk.append(op)
            texts.append(text)
            size += len(text)
        if chunk:
            batch.append(self._message(chunk, texts))
        if batch:
            self._publish(batch)

    @staticmethod
    def _message(chunk: list[Op], texts: list[str]) -> tuple[str, bytes, list[str]]:
        mid = wire.new_message_id()
        return mid, wire.build_message(mid, texts), [op.id for op in chunk]

    def _publish(self, batch: list[tuple[str, bytes, list[str]]]) -> None:
        if self._closed:
            raise RuntimeError("Producer is closed")
        self._publisher.publish([(mid, message) for mid, message, _ in batch])
        for mid, _, op_ids in batch:
            self._tracker.add(op_ids, mid)

    def wait(self, op_ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """Block until the ops are applied (readable), by default all this producer published.

        Raises `DeadLetteredError` (op id and error) if one was dead-lettered instead, and
        `TimeoutError` after `timeout` seconds. Polls Redis with backoff, never the database.
        """
        self._tracker.wait(op_ids, timeout)

    @property
    def unconfirmed(self) -> int:
        """How many published ops this producer has not yet seen applied."""
        return len(self._tracker)

    def _store(self) -> StorageClient:
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

    def close(self) -> None:
        """Close the broker connections and the reader, if one was opened."""
        with self._reader_lock:
            if self._closed:
                return
            self._closed = True
            reader, self._reader = self._reader, None
        self._publisher.close()
        if reader is not None:
            reader.close()
