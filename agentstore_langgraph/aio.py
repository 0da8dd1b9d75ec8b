"""The saver's asyncio side: writes through `AsyncProducer` (redis.asyncio), reads of the
store on a bounded pool of threads, never blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from producer import AsyncProducer
from storage import forks
from storage.config import Settings

from .pending import Pending
from .steps import Read, Settle, Step, Steps, adrive

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncSide:
    """An `AsyncProducer` per event loop (its connections belong to that loop), made on
    first use unless one was given, and `max_readers` threads reading the store."""

    def __init__(
        self,
        settings: Settings,
        pending: Pending,
        producer: AsyncProducer | None,
        max_readers: int,
    ) -> None:
        if max_readers < 1:
            raise ValueError("max_readers must be at least 1")
        self._settings = settings
        self._pending = pending
        self._given = producer
        self._lock = threading.Lock()
        self._mine: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncProducer] = (
            weakref.WeakKeyDictionary()
        )
        self._readers = forks.PerProcess(
            lambda: ThreadPoolExecutor(max_readers, thread_name_prefix="agentstore-saver-read")
        )

    def producer(self) -> AsyncProducer:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        with self._lock:
            producer = self._mine.get(loop)
            if producer is None:
                producer = self._mine[loop] = AsyncProducer(self._settings)
            return producer

    async def read(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers.get(), fn)

    async def run(self, steps: Steps[T]) -> T:
        return await adrive(steps, self._do)

    async def settle(self, threads: list[str] | None) -> None:
        await self._pending.asettle(self.producer().wait, threads)

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Settle):
            return await self.settle(step.threads)
        if isinstance(step, Read):
            return await self.read(step.fn)
        await self.producer().apply([step.op])
        self._pending.add(step.thread_id, step.op.id)
        return None

    async def aclose(self) -> None:
        """Close the running loop's own producer (publishes under way finish first)."""
        with self._lock:
            producer = self._mine.pop(asyncio.get_running_loop(), None)
        if producer is not None:
            await producer.aclose()

    def close(self) -> None:
        """Stop the readers; close the own producers of loops that are neither running nor
        closed. A closed loop's producer is dropped: its sockets close when collected."""
        with self._lock:
            mine, self._mine = dict(self._mine), weakref.WeakKeyDictionary()
        for loop, producer in mine.items():
            if not loop.is_closed() and not loop.is_running():
                with contextlib.suppress(Exception):
                    loop.run_until_complete(producer.aclose())
        readers = self._readers.made()
        if readers is not None:
            readers.shutdown(wait=False)
