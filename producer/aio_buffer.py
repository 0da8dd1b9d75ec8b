"""Buffered publishing for asyncio: saves return at once; a task on the loop publishes them.

The asyncio twin of `buffer.SendBuffer`, with the same batching (`OpQueue`,
`broker.wire.build_messages`), retries and errors; it runs on one event loop, so it needs
no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from broker import wire
from broker.errors import PublishError
from broker.tracing import Carrier
from broker.wire import Batch

from .buffer import OpQueue, buffer_full, not_flushed, retry_delay

log = logging.getLogger(__name__)


class AsyncSendBuffer:
    """Ops waiting to be published by a task on the running loop, in the order added.

    `publish` is awaited with whole batches from that task only; it raises `PublishError`
    when the broker did not take them, and the batch is retried with the same message ids.
    """

    def __init__(
        self,
        publish: Callable[[Batch], Awaitable[None]],
        *,
        linger_s: float,
        max_batch: int,
        max_buffer: int,
        buffer_timeout: float,
    ) -> None:
        if linger_s <= 0:
            raise ValueError("linger must be positive")
        if max_batch < 1 or max_buffer < max_batch:
            raise ValueError("need 1 <= max_batch <= max_buffer")
        if buffer_timeout < 0:
            raise ValueError("buffer_timeout must not be negative")
        self._publish = publish
        self._linger = linger_s
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._buffer_timeout = buffer_timeout
        self._queue = OpQueue()
        self._added = 0  # ops ever accepted
        self._sent = 0  # ops ever published, in order
        self._retry: Batch | None = None
        self._flush_to = 0
        self._error: PublishError | None = None
        self._failures = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Set on every change anyone may wait for: ops added, published, flush, stop.
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return self._added - self._sent

    @property
    def error(self) -> PublishError | None:
        return self._error

    def _notify(self) -> None:
        self._changed.set()

    async def _until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until `ready()`, at most `timeout` s; returns `ready()`."""
        try:
            async with asyncio.timeout(timeout):
                while not ready():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        return ready()

    async def add(self, op_id: str, text: str, trace: Carrier | None = None) -> None:
        """Queue one op; waits while the buffer is full, up to `buffer_timeout` seconds."""
        if self._stopping:
            raise RuntimeError("AsyncProducer is closed")
        if len(self) >= self._max_buffer and not await self._until(
            lambda: len(self) < self._max_buffer or self._stopping, self._buffer_timeout
        ):
            raise buffer_full(self._max_buffer, self._buffer_timeout, self._error)
        if self._stopping:
            raise RuntimeError("AsyncProducer is closed")
        n = self._queue.add(op_id, text, trace)
        self._added += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif n == 1 or self._queue.ready(self._max_batch):
            self._notify()  # the first op starts the linger clock; a full batch goes at once

    async def flush(self, timeout: float) -> None:
        """Publish everything added so far; raise `PublishError` if not done in `timeout` s."""
        target = self._added
        if self._sent >= target:
            return
        self._flush_to = max(self._flush_to, target)
        self._notify()
        if not await self._until(lambda: self._sent >= target, timeout):
            raise not_flushed(target - self._sent, timeout, self._error)

    async def stop(self, timeout: float) -> int:
        """Flush for up to `timeout` s, then stop the task; returns the ops left unsent."""
        with contextlib.suppress(PublishError):
            await self.flush(timeout)
        self._stopping = True
        self._notify()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=max(1.0, timeout))
            if not done:
                task.cancel()
        return len(self)

    async def _run(self) -> None:
        try:
            while (taken := await self._take()) is not None:
                if taken:
                    ids, texts, traces = taken
                    self._retry = wire.build_messages(ids, texts, self._max_batch, traces)
                batch = self._retry
                assert batch is not None
                try:
                    await self._publish(batch)
                except PublishError as exc:
                    await self._failed(batch, exc)
                    continue
                except Exception as exc:  # a bug or an unexpected client error: never die
                    log.exception("publishing buffered ops failed unexpectedly")
                    error = PublishError(f"unexpected error while publishing: {exc!r}")
                    await self._failed(batch, error)
                    continue
                self._retry = None
                self._sent += sum(len(ids) for _, _, ids in batch)
                if self._error is not None:
                    log.warning("buffered publishing recovered after %d failure(s)", self._failures)
                self._error, self._failures = None, 0
                self._notify()
        except asyncio.CancelledError:
            if len(self):
                # The loop ended (or `aclose()` gave up) with ops in memory.
                log.error("%d buffered op(s) lost: not published before the loop ended", len(self))
            raise

    async def _take(
        self,
    ) -> tuple[list[str], list[str], list[Carrier | None]] | tuple[()] | None:
        """The ops to publish next, after lingering; `()` to retry the last batch; None once
        stopping."""
        if self._stopping:
            return None
        if self._retry is not None:
            return ()
        await self._until(lambda: len(self._queue) > 0 or self._stopping, None)
        if self._stopping:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        await self._until(
            lambda: (
                self._queue.ready(self._max_batch) or self._flush_to > self._sent or self._stopping
            ),
            self._linger,
        )
        lingering = loop.time() < deadline and self._flush_to <= self._sent and not self._stopping
        return self._queue.take(self._max_batch, lingering)

    async def _failed(self, batch: Batch, exc: PublishError) -> None:
        self._error = exc
        self._failures += 1
        self._notify()
        await self._until(lambda: self._stopping, retry_delay(batch, self._failures, exc))
