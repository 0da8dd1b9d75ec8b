"""`AsyncProducer`: `Producer` for asyncio, whose coroutines never block the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

from broker import tracing
from broker.errors import PublishError
from broker.wire import MAX_OPS_PER_MESSAGE, Batch
from storage import forks
from storage import postgres_reads as pg
from storage.backends import backend_class
from storage.base import StorageClient
from storage.config import Settings
from storage.factory import create_storage_client
from storage.ops import Op, OpName, encode_op
from storage.postgres import PostgreSQLClient
from storage.postgres_async import AsyncPostgresReader

from .aio_buffer import AsyncSendBuffer
from .aio_group import GroupCommit
from .aio_publisher import AsyncPublisher, AsyncTracker
from .client import configure, lost_at_close, messages_of, publisher_options, single_message

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncProducer:
    """`Producer` with coroutines: the same settings, validation, errors and guarantees.

    Saves publish through `redis.asyncio` with the same atomic Lua script, so an op saved
    here can be waited for by a `Producer` and the reverse. Durable saves that tasks make
    while a publish is under way share the next one (group commit); each still returns only
    once Redis has it. Reads of PostgreSQL use psycopg 3's async driver, on the loop
    (threads would contend with it for the GIL); other stores run the blocking client on a
    bounded thread pool (`max_readers` threads). A save whose task is cancelled is either
    published (and covered by `wait()`) or not published at all: once begun, its publish
    finishes shielded from the cancellation. Use it on one event loop;
    `async with AsyncProducer() as store:` or `await store.aclose()` publishes what is
    buffered (ops still buffered when the loop ends without `aclose()` are lost).

    Args:
        settings, broker_url, publish_timeout, max_tracked, linger_ms, max_batch,
        max_buffer, buffer_timeout, **overrides: as for `Producer`.
        max_readers: threads reading from a store other than PostgreSQL at once, at most.
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
        max_readers: int = 8,
        **overrides: Any,
    ) -> None:
        if max_readers < 1:
            raise ValueError("max_readers must be at least 1")
        self._settings, self._url = configure(settings, broker_url, linger_ms, max_batch, overrides)
        self._publish_timeout = publish_timeout
        self._max_tracked = max_tracked
        self._buffering = (linger_ms / 1000, max_batch, max_buffer, buffer_timeout)
        self._connect()
        self._reader: StorageClient | None = None
        self._native: AsyncPostgresReader | None = None
        self._reader_lock = threading.Lock()
        self._executor = forks.PerProcess(
            lambda: ThreadPoolExecutor(max_readers, thread_name_prefix="agentstore-read")
        )
        self._closed = False
        forks.watch(self)

    def _connect(self) -> None:
        """Fresh broker clients, tracking and buffer: at creation, and in a forked child."""
        self._publisher = AsyncPublisher(
            self._url, self._publish_timeout, **publisher_options(self._settings)
        )
        self._tracker = AsyncTracker(self._publisher.redis, self._max_tracked)
        # Publishes under way, shielded from their callers' cancellation; `wait()` awaits them.
        self._inflight: set[asyncio.Future[None]] = set()
        self._group = GroupCommit(self._publish_now)
        linger_s, max_batch, max_buffer, buffer_timeout = self._buffering
        self._buffer: AsyncSendBuffer | None = None
        if linger_s > 0:
            self._buffer = AsyncSendBuffer(
                self._publish_now,
                linger_s=linger_s,
                max_batch=max_batch,
                max_buffer=max_buffer,
                buffer_timeout=buffer_timeout,
            )

    def _after_fork_in_child(self) -> None:
        # The parent's sockets, loop-bound streams, publishes and buffer stay the parent's;
        # the child connects on first use. (The reader forks safely by itself.)
        self._reader_lock = threading.Lock()
        self._native = None  # its connections stay the parent's (psycopg checks the pid)
        self._connect()

    def __repr__(self) -> str:
        return f"AsyncProducer(broker={self._publisher.masked_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- saves ----------------------------------------------------------------------

    async def _submit(self, name: OpName, args: dict[str, Any], version: str | int | None) -> str:
        with tracing.save_span(name) as trace:
            op_id, text = encode_op(name, args, version=version)
            if self._closed:
                raise RuntimeError("AsyncProducer is closed")
            if self._buffer is not None:
                await self._buffer.add(op_id, text, trace)
            else:
                await self._publish(single_message(op_id, text, trace))
            return op_id

    async def _publish(self, batch: Batch) -> None:
        if self._closed:
            raise RuntimeError("AsyncProducer is closed")
        publish = self._group.submit(batch)
        self._inflight.add(publish)
        publish.add_done_callback(self._inflight.discard)
        try:
            await asyncio.shield(publish)
        except asyncio.CancelledError:
            publish.add_done_callback(_log_orphan_failure)
            raise

    async def _publish_now(self, batch: Batch) -> None:
        await self._publisher.publish([(mid, message) for mid, message, _ in batch])
        for mid, _, op_ids in batch:
            await self._tracker.add(op_ids, mid)

    async def save_state(
        self,
        agent_id: str,
        state_id: str,
        state: dict[str, Any],
        *,
        version: str | int | None = None,
    ) -> str:
        """As `Producer.save_state`: returns the op id."""
        args = {"agent_id": agent_id, "state_id": state_id, "state": state}
        return await self._submit("save_state", args, version)

    async def save_task(
        self,
        agent_id: str,
        task_id: str,
        task_data: dict[str, Any],
        *,
        version: str | int | None = None,
    ) -> str:
        """As `Producer.save_task`: returns the op id."""
        args = {"agent_id": agent_id, "task_id": task_id, "task_data": task_data}
        return await self._submit("save_task", args, version)

    async def save_conversation(
        self, conversation_id: str, message: dict[str, Any], *, version: str | int | None = None
    ) -> str:
        """As `Producer.save_conversation`: returns the op id."""
        args = {"conversation_id": conversation_id, "message": message}
        return await self._submit("save_conversation", args, version)

    async def save_transactions(
        self, case_id: str, transactions: list[dict[str, Any]], *, version: str | int | None = None
    ) -> str:
        """As `Producer.save_transactions`: returns the op id."""
        args = {"case_id": case_id, "transactions": transactions}
        return await self._submit("save_transactions", args, version)

    async def delete_state(
        self, agent_id: str, state_id: str, *, version: str | int | None = None
    ) -> str:
        """As `Producer.delete_state`: returns the op id."""
        args = {"agent_id": agent_id, "state_id": state_id}
        return await self._submit("delete_state", args, version)

    async def delete_task(
        self, agent_id: str, task_id: str, *, version: str | int | None = None
    ) -> str:
        """As `Producer.delete_task`: returns the op id."""
        args = {"agent_id": agent_id, "task_id": task_id}
        return await self._submit("delete_task", args, version)

    async def delete_conversation(
        self, conversation_id: str, *, version: str | int | None = None
    ) -> str:
        """As `Producer.delete_conversation`: returns the op id."""
        args = {"conversation_id": conversation_id}
        return await self._submit("delete_conversation", args, version)

    async def delete_transactions(
        self, case_id: str, ids: list[str] | None = None, *, version: str | int | None = None
    ) -> str:
        """As `Producer.delete_transactions`: returns the op id."""
        return await self._submit("delete_transactions", {"case_id": case_id, "ids": ids}, version)

    async def erase_agent(self, agent_id: str, *, version: str | int | None = None) -> str:
        """As `Producer.erase_agent`: returns the op id."""
        return await self._submit("erase_agent", {"agent_id": agent_id}, version)

    async def apply(self, ops: Sequence[Op]) -> None:
        """Publish already validated ops, many per message, all in one atomic publish."""
        batch = messages_of(ops)
        if batch:
            await self._publish(batch)

    async def apply_encoded(self, op_id: str, text: str) -> None:
        """As `Producer.apply_encoded`."""
        await self._publish(single_message(op_id, text))

    # -- publishing state -------------------------------------------------------------

    async def flush(self, timeout: float = 30.0) -> None:
        """As `Producer.flush`: publish every buffered op now."""
        if self._buffer is not None:
            await self._buffer.flush(timeout)

    @property
    def buffered(self) -> int:
        """Ops saved but not yet published (always 0 without buffering)."""
        return 0 if self._buffer is None else len(self._buffer)

    @property
    def publish_error(self) -> PublishError | None:
        """The background publisher's last failure, while its buffer has not drained since."""
        return None if self._buffer is None else self._buffer.error

    def is_unconfirmed(self, op_id: str) -> bool:
        """Whether `op_id`, published by this producer, is not yet seen applied (an applied
        op is forgotten once a `wait` or the tracker's sweep sees it)."""
        return op_id in self._tracker

    @property
    def unconfirmed(self) -> int:
        """Saved ops this producer has not yet seen applied: buffered, queued, dead-lettered."""
        return len(self._tracker) + self.buffered

    async def wait(self, op_ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """As `Producer.wait`, raising the same errors; it also covers saves whose caller was
        cancelled while their publish went on."""
        deadline = time.monotonic() + timeout
        if op_ids is not None:
            op_ids = list(op_ids)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        if self._buffer is not None and len(self._buffer):
            await self._buffer.flush(max(0.0, deadline - time.monotonic()))
        await self._tracker.wait(op_ids, max(0.0, deadline - time.monotonic()))

    # -- reads ----------------------------------------------------------------------

    def _store(self) -> StorageClient:
        with self._reader_lock:
            if self._closed:
                raise RuntimeError("AsyncProducer is closed")
            if self._reader is None:
                self._reader = create_storage_client(self._settings)
            return self._reader

    async def _read(
        self, query: Callable[[], pg.Query[T]], read: Callable[[StorageClient], T]
    ) -> T:
        """`query` on PostgreSQL's async reader, else `read` with the blocking client on a
        reader thread."""
        if self._closed:
            raise RuntimeError("AsyncProducer is closed")
        if self._native is None and backend_class(self._settings) is PostgreSQLClient:
            self._native = AsyncPostgresReader(self._settings)
        if self._native is not None:
            return await self._native.query(query())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor.get(), lambda: read(self._store()))

    async def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        """As `Producer.get_state`."""
        return await self._read(
            lambda: pg.get_state(agent_id, state_id), lambda s: s.get_state(agent_id, state_id)
        )

    async def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        """As `Producer.get_task`."""
        return await self._read(
            lambda: pg.get_task(agent_id, task_id), lambda s: s.get_task(agent_id, task_id)
        )

    async def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """As `Producer.get_conversation_history`."""
        return await self._read(
            lambda: pg.get_conversation_history(conversation_id, limit),
            lambda s: s.get_conversation_history(conversation_id, limit),
        )

    async def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        """As `Producer.get_transactions`."""
        return await self._read(
            lambda: pg.get_transactions(case_id), lambda s: s.get_transactions(case_id)
        )

    async def list_states(self, agent_id: str) -> list[str]:
        """As `Producer.list_states`."""
        return await self._read(lambda: pg.list_states(agent_id), lambda s: s.list_states(agent_id))

    async def list_tasks(self, agent_id: str) -> list[str]:
        """As `Producer.list_tasks`."""
        return await self._read(lambda: pg.list_tasks(agent_id), lambda s: s.list_tasks(agent_id))

    # -- closing ----------------------------------------------------------------------

    async def aclose(self, timeout: float = 30.0) -> None:
        """As `Producer.close`: publish what is buffered and publishes under way, then close
        the broker connections and the reader; `PublishError` says how many ops were lost."""
        if self._closed:
            return
        self._closed = True
        left, error = 0, None
        if self._buffer is not None:
            error = self._buffer.error
            left = await self._buffer.stop(timeout)
            error = self._buffer.error or error
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        await self._publisher.aclose()
        native, self._native = self._native, None
        if native is not None:
            await native.aclose()
        executor = self._executor.made()
        with self._reader_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(executor, reader.close)
        if executor is not None:
            executor.shutdown(wait=False)
        if left:
            raise lost_at_close(left, timeout, error)


def _log_orphan_failure(publish: asyncio.Future[None]) -> None:
    # The caller was cancelled, so nobody else sees this publish fail.
    if not publish.cancelled() and (exc := publish.exception()) is not None:
        log.warning("a save cancelled while publishing was not published: %s", exc)
