"""The saver's asyncio side: writes through `AsyncProducer` (redis.asyncio), checkpoint
loads on PostgreSQL's async driver (psycopg 3), other reads of the store on a bounded pool
of threads, never blocking the event loop."""

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
from storage import postgres_reads as pg
from storage.base import StorageBackend
from storage.checkpoint_reads import Loaded, Wanted
from storage.config import Settings
from storage.postgres import PostgreSQLClient
from storage.postgres_async import AsyncPostgresReader

from .pending import Pending
from .steps import Load, Read, Settle, Step, Steps, adrive

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncSide:
    """An `AsyncProducer` per event loop (its connections belong to that loop), made on
    first use unless one was given; on PostgreSQL an `AsyncPostgresReader` per event loop
    (checkpoint loads without threads contending with the loop for the GIL); `max_readers`
    threads reading `store` for the rest."""

    def __init__(
        self,
        settings: Settings,
        store: StorageBackend,
        pending: Pending,
        producer: AsyncProducer | None,
        max_readers: int,
    ) -> None:
        if max_readers < 1:
            raise ValueError("max_readers must be at least 1")
        self._settings = settings
        self._store = store
        self._native = isinstance(store, PostgreSQLClient)
        self._pending = pending
        self._given = producer
        self._lock = threading.Lock()
        self._mine: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncProducer] = (
            weakref.WeakKeyDictionary()
        )
        self._pg: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPostgresReader] = (
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

    async def load(self, wanted: Wanted) -> list[Loaded]:
        if not self._native:
            return await self.read(lambda: self._store.load_checkpoints(wanted))
        loop = asyncio.get_running_loop()
        with self._lock:
            reader = self._pg.get(loop)
            if reader is None:
                reader = self._pg[loop] = AsyncPostgresReader(self._settings)
        return await reader.query(pg.load_checkpoints(wanted))

    async def run(self, steps: Steps[T]) -> T:
        return await adrive(steps, self._do)

    async def settle(self, threads: list[str] | None) -> None:
        await self._pending.asettle(self.producer().wait, threads)

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Settle):
            return await self.settle(step.threads)
        if isinstance(step, Load):
            return await self.load(step.wanted)
        if isinstance(step, Read):
            return await self.read(step.fn)
        producer = self.producer()
        await producer.apply_encoded(step.op_id, step.text)
        self._pending.add(step.thread_id, step.op_id, producer.is_unconfirmed)
        return None

    async def aclose(self) -> None:
        """Close the running loop's own producer (publishes under way finish first) and
        PostgreSQL reader."""
        loop = asyncio.get_running_loop()
        with self._lock:
            producer = self._mine.pop(loop, None)
            reader = self._pg.pop(loop, None)
        if producer is not None:
            await producer.aclose()
        if reader is not None:
            await reader.aclose()

    def close(self) -> None:
        """Stop the readers; close the own producers and PostgreSQL readers of loops that are
        neither running nor closed. A closed loop's are dropped: their sockets close when
        collected."""
        with self._lock:
            mine, self._mine = dict(self._mine), weakref.WeakKeyDictionary()
            pgs, self._pg = dict(self._pg), weakref.WeakKeyDictionary()
        closing: list[tuple[asyncio.AbstractEventLoop, Any]] = [
            *((loop, producer.aclose) for loop, producer in mine.items()),
            *((loop, reader.aclose) for loop, reader in pgs.items()),
        ]
        for loop, aclose in closing:
            if not loop.is_closed() and not loop.is_running():
                with contextlib.suppress(Exception):
                    loop.run_until_complete(aclose())
        readers = self._readers.made()
        if readers is not None:
            readers.shutdown(wait=False)
