"""`AgentStoreSaver`: a LangGraph checkpointer whose writes go through agentstore's queue."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from producer import AsyncProducer, Producer
from storage import checkpoint_prune
from storage import checkpoint_reads as reads
from storage.base import StorageBackend
from storage.checkpoint_encode import encode_checkpoint_op
from storage.checkpoint_reads import Loaded
from storage.config import Settings, load_settings
from storage.factory import create_storage_client
from storage.ops import OpName
from storage.records import Record

from .aio import AsyncSide
from .pending import Pending
from .reading import StoreReads, load_everything, wanted_list, wanted_one
from .steps import Load, Publish, Read, Settle, Step, Steps, drive

T = TypeVar("T")


def _blob(typed: tuple[str, bytes]) -> dict[str, str]:
    return {"type": typed[0], "data": base64.b64encode(typed[1]).decode("ascii")}


class AgentStoreSaver(StoreReads):
    """Checkpoints in agentstore's store: writes are queued ops, reads go straight to the store.

    `put`, `put_writes`, `delete_thread`, `delete_for_runs`, `copy_thread` and `prune`
    publish ops (durably, as `Producer` saves do) that the workers apply in batches,
    idempotently. Reads see every write this saver made to the thread they read: they wait
    until those are applied (`StaleReadError` after `read_timeout` seconds); a thread with
    nothing pending costs no wait. Another saver or process sees a write once a worker has
    applied it (session consistency). Values are serialised by LangGraph's
    `JsonPlusSerializer` without its pickle fallback; the workers never deserialise them.

    The async methods (`aput`, `aget_tuple`, ...) do the same without blocking the event
    loop: they publish through an `AsyncProducer` (one per event loop, made on first use)
    and load checkpoints on psycopg 3's async driver (PostgreSQL) or on at most
    `max_readers` threads (other stores). A read loads a checkpoint with its channel values
    and pending writes in one round trip on PostgreSQL (`StorageBackend.load_checkpoints`).
    Sync and async calls may be mixed on one saver: each sees the other's writes. Close with
    `close()`, or in async code with `async with` / `aclose()`, which also closes the running
    loop's producer and PostgreSQL reader.

    Args:
        settings: as from `storage.load_settings()`; read from the environment and `.env`
            when omitted, as `Producer` does.
        read_timeout: seconds a read waits for this saver's pending writes to its thread.
        producer: publish through this producer instead of one of the saver's own.
        async_producer: the async methods publish through this one (on its event loop
            only) instead of the saver's own.
        max_readers: threads reading a store other than PostgreSQL for the async methods,
            at most (on PostgreSQL only `delete_for_runs`, `prune` and `list(None)` use them).
        **overrides: settings to use when `settings` is None.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        read_timeout: float = 30.0,
        producer: Producer | None = None,
        async_producer: AsyncProducer | None = None,
        max_readers: int = 8,
        **overrides: Any,
    ) -> None:
        super().__init__(serde=JsonPlusSerializer(pickle_fallback=False))
        self._settings = settings or load_settings(**overrides)
        self._own_producer = producer is None
        self._producer = producer or Producer(self._settings)
        store = create_storage_client(self._settings)
        if not isinstance(store, StorageBackend):
            raise TypeError(f"AgentStoreSaver needs a storage backend, got {store!r}")
        self._store = store
        self._pending = Pending(read_timeout)
        self._async = AsyncSide(self._settings, store, self._pending, async_producer, max_readers)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store's connections and the producers the saver made."""
        self._async.close()
        self._store.close()
        if self._own_producer:
            self._producer.close()

    async def aclose(self) -> None:
        """`close()` for async code: the running loop's producer is closed on that loop."""
        await self._async.aclose()
        await asyncio.to_thread(self.close)  # the store's pool closes blocking

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- method bodies: steps the sync and the async drivers run (steps.py) -------------------

    def _run(self, steps: Steps[T]) -> T:
        return drive(steps, self._do)

    def _do(self, step: Step) -> Any:
        if isinstance(step, Settle):
            return self._pending.settle(self._producer.wait, step.threads)
        if isinstance(step, Load):
            return self._store.load_checkpoints(step.wanted)
        if isinstance(step, Read):
            return step.fn()
        self._producer.apply_encoded(step.op_id, step.text)
        self._pending.add(step.thread_id, step.op_id, self._producer.is_unconfirmed)
        return None

    def _op(self, name: OpName, args: dict[str, Any]) -> Publish:
        # Validated here: a bad or oversized call publishes nothing.
        return Publish(args["thread_id"], *encode_checkpoint_op(name, args))

    def _put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Steps[RunnableConfig]:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        head = checkpoint.copy()
        values: dict[str, Any] = head.pop("channel_values")  # type: ignore[misc]
        meta = get_checkpoint_metadata(config, metadata)
        # Fields in the models' order, which `encode_checkpoint_op` encodes at once.
        blobs = [
            {
                **_blob(
                    self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
                ),
                "channel": channel,
                "version": str(version),
            }
            for channel, version in new_versions.items()
        ]
        yield self._op(
            "put_checkpoint",
            {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
                "parent_checkpoint_id": conf.get("checkpoint_id"),
                "checkpoint": _blob(self.serde.dumps_typed(head)),
                "metadata": _blob(self.serde.dumps_typed(meta)),
                "channel_versions": {k: str(v) for k, v in checkpoint["channel_versions"].items()},
                "delta_channels": sorted(meta.get("counters_since_delta_snapshot") or {}),
                "run_id": str(meta["run_id"]) if meta.get("run_id") is not None else None,
                "blobs": blobs,
            },
        )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> Steps[None]:
        conf = config["configurable"]
        items = [
            {
                **_blob(self.serde.dumps_typed(value)),
                "idx": WRITES_IDX_MAP.get(channel, idx),
                "channel": channel,
            }
            for idx, (channel, value) in enumerate(writes)
        ]
        yield self._op(
            "put_writes",
            {
                "thread_id": conf["thread_id"],
                "checkpoint_ns": conf.get("checkpoint_ns", ""),
                "checkpoint_id": conf["checkpoint_id"],
                "task_id": task_id,
                "task_path": task_path,
                "writes": items,
            },
        )

    def _delete_thread(self, thread_id: str) -> Steps[None]:
        yield self._op("delete_thread", {"thread_id": thread_id})

    def _delete_for_runs(self, run_ids: Sequence[str]) -> Steps[None]:
        wanted = {str(r) for r in run_ids}
        if not wanted:
            return
        yield Settle(None)
        doomed: list[dict[str, Any]] = yield Read(partial(self._runs_rows, wanted))
        for rows in doomed:
            yield self._op("delete_checkpoint_rows", rows)

    def _runs_rows(self, wanted: set[str]) -> list[dict[str, Any]]:
        threads: dict[str, list[Record]] = {}
        for rec in reads.all_checkpoints(self._store):
            if rec.data.get("run_id") in wanted:
                threads.setdefault(rec.partition, []).append(rec)
        found = []
        for thread_id, doomed in threads.items():
            gone = {r.row_id for r in doomed}
            keep = [
                r for r in reads.checkpoints(self._store, thread_id, None) if r.row_id not in gone
            ]
            found.append(checkpoint_prune.doomed_rows(self._store, thread_id, doomed, keep))
        return found

    def _copy_thread(self, source_thread_id: str, target_thread_id: str) -> Steps[None]:
        source: RunnableConfig = {"configurable": {"thread_id": source_thread_id}}
        found = yield from self._list(source)
        for tup in map(self._tuple, reversed(found)):
            conf = tup.config["configurable"]
            target: RunnableConfig = {
                "configurable": {
                    "thread_id": target_thread_id,
                    "checkpoint_ns": conf["checkpoint_ns"],
                    "checkpoint_id": tup.parent_config["configurable"]["checkpoint_id"]
                    if tup.parent_config
                    else None,
                }
            }
            versions = tup.checkpoint["channel_versions"]
            saved = yield from self._put(target, tup.checkpoint, tup.metadata, versions)
            by_task: dict[str, list[tuple[str, Any]]] = {}
            for task_id, channel, value in tup.pending_writes or ():
                by_task.setdefault(task_id, []).append((channel, value))
            for task_id, task_writes in by_task.items():
                yield from self._put_writes(saved, task_writes, task_id)

    def _prune(self, thread_ids: Sequence[str], strategy: str) -> Steps[None]:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                yield from self._delete_thread(thread_id)
                continue
            yield Settle([thread_id])
            rows = yield Read(partial(checkpoint_prune.prune_rows, self._store, thread_id, 1))
            if rows is not None:
                yield self._op("delete_checkpoint_rows", rows)

    def _get_tuple(self, config: RunnableConfig) -> Steps[CheckpointTuple | None]:
        yield Settle([config["configurable"]["thread_id"]])
        found: list[Loaded] = yield Load(wanted_one(config))
        return self._tuple(found[0]) if found else None

    def _list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Steps[list[Loaded]]:
        before_id = get_checkpoint_id(before) if before else None
        found: list[Loaded]
        if config is None:
            yield Settle(None)
            found = yield Read(partial(load_everything, self._store))
        else:
            yield Settle([config["configurable"]["thread_id"]])
            found = yield Load(wanted_list(config, filter, before_id, limit))
        return list(self._pick(found, filter, before_id, limit))

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(self._put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._run(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._run(self._delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints made by `run_ids` and their writes (a scan of every thread)."""
        self._run(self._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint of every namespace, with its blobs and writes, to the target."""
        self._run(self._copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`"keep_latest"`: keep the newest checkpoint of each namespace, with everything
        LangGraph needs to load it (`storage.checkpoint_prune`: the blobs older checkpoints
        wrote that it still refers to, and for a `DeltaChannel` the ancestors, with their
        writes, back to its last snapshot); `"delete"`: delete the threads."""
        self._run(self._prune(thread_ids, strategy))

    # -- reads ------------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        found = self._run(self._list(config, filter=filter, before=before, limit=limit))
        yield from map(self._tuple, found)

    def get_next_version(self, current: str | None, channel: None) -> str:
        # As InMemorySaver's: sortable strings, unique per put even from concurrent forks.
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- async: the same bodies, publishing through AsyncProducer, reading on threads ----------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._async.run(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await self._async.run(self._list(config, filter=filter, before=before, limit=limit))
        for loaded in found:
            yield self._tuple(loaded)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._async.run(self._put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._async.run(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._async.run(self._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._async.run(self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._async.run(self._copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._async.run(self._prune(thread_ids, strategy))
